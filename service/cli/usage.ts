/** The help texts of bootc-prestage: one per command, plus the overview. */

export const EXIT_STATUS_HELP = `Exit status:
  0    success (the phase succeeded, or the query answered)
  1    the transaction failed, timed out or was cancelled; bootc failed
  2    usage error (bad command line, or arguments the daemon refused)
  3    busy: another transaction is running (retry later or pass --wait)
  4    not found: no such deployment, transaction or hook, or an invalid
       deployment or hook definition
  5    cannot reach the daemon (no bus, not running and not activatable,
       it went away), or access denied (mutating commands need root or polkit)
  130  interrupted by a second Ctrl-C (the daemon carries on)
`;

const GLOBAL_OPTIONS = `Global options:
  --address ADDRESS  D-Bus address of the bus (default: $DBUS_SYSTEM_BUS_ADDRESS,
                     else the system bus, unix:path=/run/dbus/system_bus_socket)
  --json             machine output: one JSON object per line
  --no-ask-password  never let polkit ask for a password (by default it may
                     when stdin is a terminal; without one it never does)
  -h, --help         show help
  --version          print the version
`;

export const OVERVIEW = `Usage: bootc-prestage [--address ADDRESS] [--json] [--no-ask-password] COMMAND [ARGS...]

Run and follow the pre-stage hooks of a staged bootc deployment through
bootc-prestaged (org.containers.bootc.PreStage on the system bus).

Commands:
  start DEPLOYMENT|--staged   run every hook's prepare step, as one transaction
  commit DEPLOYMENT           run the commit steps of a prepared deployment
  abort DEPLOYMENT            run the abort steps (undo a prepared deployment)
  reconcile                   commit the booted deployment, abort vanished ones
  upgrade [--apply]           bootc upgrade --download-only, start, then
                              bootc upgrade --from-downloaded
  status                      the service state and its transactions
  hooks [DEPLOYMENT]          the effective hooks, in run order
  register NAME ...           install a hook in /etc (or /run) from options or a file
  unregister NAME             remove a registered hook
  cancel TRANSACTION          cancel a running prepare phase
  log TRANSACTION             a transaction's log
  monitor                     print every signal of the service until Ctrl-C
  help [COMMAND]              show help for a command

On a terminal, start, commit, abort, reconcile and upgrade show a live
progress display; otherwise they print one line per event (--json: one JSON
object per event). Ctrl-C while following a prepare phase cancels it and
waits for the rollback; a second Ctrl-C stops waiting.

${GLOBAL_OPTIONS}
${EXIT_STATUS_HELP}`;

const FOLLOW_NOTE = `Without --no-follow the command follows the transaction to the end of the
phase: a live display on a terminal, one line per event otherwise, one JSON
object per event with --json.`;

export const COMMAND_HELP: Readonly<Record<string, string>> = {
  start: `Usage: bootc-prestage start DEPLOYMENT [OPTIONS]
       bootc-prestage start --staged [--sysroot DIR] [OPTIONS]

Run the prepare step of every effective hook of DEPLOYMENT (a deployment
directory, <sysroot>/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>)
as one transaction. If a required hook fails, every prepare step that ran
is undone (abort steps, in reverse order) and the command exits 1. A
deployment already prepared with the same hooks returns at once.

Options:
  --staged           the deployment bootc has staged (from
                     'bootc status --format=json', status.staged.ostree);
                     an unlocked stage is locked for the prepare phase and
                     unlocked again after a success
  --sysroot DIR      the sysroot for --staged (default: /sysroot)
  --force            run again even if already prepared with the same hooks
  --wait             queue behind a running transaction instead of failing busy
  --dry-run          resolve and order the hooks, run nothing
  --timeout SEC      deadline for the whole phase, in seconds
  --no-follow        print the transaction path and return at once
  --progress-fd FD   also write progress to FD in bootc's progress protocol
                     (JSON lines: one Start, then ProgressSteps events)

${FOLLOW_NOTE}
Ctrl-C cancels the transaction and waits for the rollback (exit 1); a
second Ctrl-C exits at once (130) while the daemon finishes the rollback.

${EXIT_STATUS_HELP}`,

  commit: `Usage: bootc-prestage commit DEPLOYMENT [--wait] [--timeout SEC] [--no-follow] [--progress-fd FD]

Run the commit step of every hook of DEPLOYMENT's prepared transaction (the
daemon does this by itself at boot: see reconcile). Commit steps cannot be
cancelled: Ctrl-C says so, and a second Ctrl-C stops waiting.

Options:
  --wait           queue behind a running transaction instead of failing busy
  --timeout SEC    deadline for the whole phase, in seconds
  --no-follow      print the transaction path and return at once
  --progress-fd FD also write progress to FD in bootc's progress protocol

${FOLLOW_NOTE}

${EXIT_STATUS_HELP}`,

  abort: `Usage: bootc-prestage abort DEPLOYMENT [--wait] [--timeout SEC] [--no-follow] [--progress-fd FD]

Run the abort step of every hook of DEPLOYMENT's prepared transaction, in
reverse order: undo what the prepare phase did. The deployment need not
exist any more. Abort steps cannot be cancelled.

Options:
  --wait           queue behind a running transaction instead of failing busy
  --timeout SEC    deadline for the whole phase, in seconds
  --no-follow      print the transaction path and return at once
  --progress-fd FD also write progress to FD in bootc's progress protocol

${FOLLOW_NOTE}

${EXIT_STATUS_HELP}`,

  reconcile: `Usage: bootc-prestage reconcile [--no-follow] [--progress-fd FD]

Commit the booted deployment's prepared transaction and abort those whose
deployment is gone (the daemon also does this when it starts). Follows every
transaction it queued; exits 1 if any of them failed. First it shows the
upgrades the boot gate discarded at the last shutdown.

Options:
  --no-follow        print the transaction paths and return at once
  --progress-fd FD   write progress to FD in bootc's progress protocol

${EXIT_STATUS_HELP}`,

  upgrade: `Usage: bootc-prestage upgrade [--apply] [OPTIONS]

The whole upgrade with pre-stage hooks, for today's bootc:
  1. bootc upgrade --download-only      (stage the new deployment, locked)
  2. bootc-prestage start --staged      (run the prepare steps, followed)
  3. bootc upgrade --from-downloaded    (unlock it; with --apply, reboot)
The lock is verified after step 1 (status.staged.downloadOnly, or the lock
file); a stage bootc left unlocked is locked before step 2. If the prepare
phase fails, step 3 is not run: the staged deployment stays locked, and
ostree discards it at the next reboot, so it can never boot.

Options:
  --apply            pass --apply to the last bootc command (reboot into it)
  --sysroot DIR      the sysroot (default: /sysroot)
  --force            run the prepare steps even if already prepared
  --timeout SEC      deadline for the prepare phase, in seconds
  --progress-fd FD   write progress to FD in bootc's progress protocol; bootc's
                     own progress is relayed into the same stream (one Start)

bootc is run from PATH.

${EXIT_STATUS_HELP}`,

  status: `Usage: bootc-prestage status [--json]

Show the service's version and state, the active transaction, and every
transaction it knows (oldest first) with its phase, state and result.
Reading the status needs no privileges.

${EXIT_STATUS_HELP}`,

  hooks: `Usage: bootc-prestage hooks [DEPLOYMENT] [--json]

List the effective hooks for DEPLOYMENT in run order (without DEPLOYMENT:
the host's hooks only, from /etc/bootc/pre-stage.d and /run/bootc/pre-stage.d),
with where each comes from. Refused hooks (unsafe owner or mode) are marked.

${EXIT_STATUS_HELP}`,

  register: `Usage: bootc-prestage register NAME --prepare CMD [OPTIONS]
       bootc-prestage register NAME --file FILE.hook [--runtime]

Install hook NAME as /etc/bootc/pre-stage.d/NAME.hook (with --runtime,
/run/bootc/pre-stage.d/NAME.hook, gone at reboot), written atomically by the
daemon. A command line is split like systemd's (quotes, no shell) and its
program must be an absolute path; \${VAR} expands from the hook's environment.

Options:
  --prepare CMD        the prepare step
  --commit CMD         the commit step
  --abort CMD          the abort step
  --after NAME         run after hook NAME (repeatable)
  --before NAME        run before hook NAME (repeatable)
  --env KEY=VALUE      environment of the steps (repeatable)
  --optional           a failure is a warning, not a stop (Required=no)
  --timeout SEC|infinity  per-step timeout (default 300)
  --description TEXT   what the hook does
  --file FILE.hook     take the whole definition from a hook file instead
  --runtime            register in /run instead of /etc

${EXIT_STATUS_HELP}`,

  unregister: `Usage: bootc-prestage unregister NAME

Remove hook NAME registered in /etc/bootc/pre-stage.d or /run/bootc/pre-stage.d.
Hooks shipped by an image (/usr/lib/bootc/pre-stage.d) are masked instead with
an empty file or a link to /dev/null in /etc/bootc/pre-stage.d.

${EXIT_STATUS_HELP}`,

  cancel: `Usage: bootc-prestage cancel TRANSACTION [--no-wait]

Cancel a running (or queued) prepare phase: the current step is stopped and
every prepare step that ran is undone. TRANSACTION is an id (as 'status'
shows it) or an object path. Waits until the transaction has come to rest
unless --no-wait; exits 0 when it ended cancelled.

${EXIT_STATUS_HELP}`,

  log: `Usage: bootc-prestage log TRANSACTION [--lines N] [--hook NAME]

Print a transaction's log: every line its hooks wrote, and its events.
TRANSACTION is an id (as 'status' shows it) or an object path.

Options:
  --lines N      the last N lines (default 1000)
  --hook NAME    only the lines of hook NAME

${EXIT_STATUS_HELP}`,

  monitor: `Usage: bootc-prestage monitor [--json]

Print every signal the service sends (transactions starting and finishing,
hook progress and output, property changes) and the daemon starting or
exiting, until interrupted with Ctrl-C. Does not start the daemon.

${EXIT_STATUS_HELP}`,

  help: `Usage: bootc-prestage help [COMMAND]

Show the overview, or the help of COMMAND.
`,
};

export const COMMANDS = Object.keys(COMMAND_HELP);
