/*
 * The page's model: bootc-prestaged's state on the system bus, live, with
 * no React in it. The view (app.jsx) renders `model.view()`; the model
 * asks for a render through `onChange`, at most once per RENDER_DELAY_MS.
 *
 * What must stay true (README.md, "The Cockpit page"; the bus interface is
 * README.md's "D-Bus API"):
 * - Late subscribers lose nothing the daemon keeps: properties (GetAll,
 *   then PropertiesChanged) carry the whole state, so the page shows a
 *   running or finished transaction correctly whenever it is opened.
 *   Output lines are only in Message signals; the full output is behind
 *   GetLog (administrators only).
 * - One signal subscription covers every transaction path, made before
 *   ListTransactions, so no Message of a transaction that starts while the
 *   page loads is lost for want of a proxy.
 * - Text from the bus is text: the view renders it as React text, the log
 *   pane through textContent, never as markup.
 * - Rendering is coalesced: signals can come at 20 per second per hook, and
 *   a transaction can have hundreds of hooks; each record's `props` object
 *   is replaced (never mutated) when its properties change, so the view can
 *   skip what did not change. New log lines go to the pane in the same
 *   tick, all at once: whether the pane is scrolled to the bottom is read
 *   once per tick, since each read after a DOM change forces a layout.
 * - 't' properties arrive as JS numbers (the daemon keeps them below 2^53).
 */
import cockpit from 'cockpit';

const _ = cockpit.gettext;

export const SERVICE = 'org.containers.bootc.PreStage';
const MANAGER_PATH = '/org/containers/bootc/PreStage';
const MANAGER_IFACE = 'org.containers.bootc.PreStage';
const TX_IFACE = 'org.containers.bootc.PreStage.Transaction';
const TX_PATH_PREFIX = '/org/containers/bootc/PreStage/Transaction';
const NO_TRANSACTION = '/';
/** Lines kept per transaction in the page; GetLog has them all. */
const MAX_LOG_LINES = 2000;
/** Rendering is coalesced to this period. */
const RENDER_DELAY_MS = 50;
const FULL_LOG_LINES = 100000;
/** After the connection closed (the service is missing, the bridge died), try again this late. */
const RECONNECT_DELAY_MS = 10000;

/** States in which a transaction is still working (Transaction.State). */
export const WORKING_STATES = new Set(['queued', 'preparing', 'cancelling', 'rolling-back', 'committing', 'aborting']);
/** States in which Cancel() can still change something. */
export const CANCELLABLE_STATES = new Set(['queued', 'preparing']);

const STATE_LABELS = {
    idle: _('Idle'),
    busy: _('Busy'),
    queued: _('Queued'),
    preparing: _('Preparing'),
    cancelling: _('Cancelling'),
    'rolling-back': _('Rolling back'),
    prepared: _('Prepared'),
    committing: _('Committing'),
    committed: _('Committed'),
    aborting: _('Aborting'),
    aborted: _('Aborted'),
    failed: _('Failed'),
    cancelled: _('Cancelled'),
    pending: _('Pending'),
    running: _('Running'),
    success: _('Success'),
    skipped: _('Skipped'),
    timeout: _('Timed out'),
};
export const PHASE_LABELS = { prepare: _('Prepare'), commit: _('Commit'), abort: _('Abort') };

export function label(state) {
    return STATE_LABELS[state] || state || '';
}

/** The tone of a transaction state or hook result: 'success', 'danger', 'warning', 'neutral' or 'info'. */
export function toneOf(state) {
    switch (state) {
    case 'prepared': case 'committed': case 'success':
        return 'success';
    case 'failed': case 'timeout':
        return 'danger';
    case 'cancelled': case 'cancelling': case 'rolling-back': case 'aborted': case 'aborting': case 'skipped':
        return 'warning';
    case 'queued': case 'pending':
        return 'neutral';
    default:
        return 'info';
    }
}

export function idOf(path) {
    return path.slice(path.lastIndexOf('/') + 1);
}

export function formatTime(usec) {
    if (!usec) return '';
    return new Date(usec / 1000).toLocaleString();
}

export function formatDuration(startUsec, endUsec) {
    if (!startUsec) return '';
    const end = endUsec || Date.now() * 1000;
    const exact = Math.max(0, (end - startUsec) / 1e6);
    if (exact < 10) return cockpit.format(_('$0 s'), exact.toFixed(1));
    const sec = Math.round(exact);
    if (sec < 60) return cockpit.format(_('$0 s'), sec);
    const min = Math.floor(sec / 60);
    if (min < 60) return cockpit.format(_('$0 min $1 s'), min, sec % 60);
    return cockpit.format(_('$0 h $1 min'), Math.floor(min / 60), min % 60);
}

export function clampPercent(v) {
    const n = Number(v);
    if (!Number.isFinite(n)) return 0;
    return Math.min(100, Math.max(0, Math.round(n)));
}

/*
 * A D-Bus error for people. AccessDenied from the bus policy carries a dump
 * of the matched rules, polkit's names the action; what the viewer needs is
 * the reason.
 */
function errorText(err) {
    if (!err) return '';
    if (err.name === 'org.freedesktop.DBus.Error.AccessDenied')
        return _('not permitted: this needs administrative access');
    if (err.name && err.message) return err.name + ': ' + err.message;
    return cockpit.message(err);
}

export function createModel(onChange) {
    /*
     * One record per transaction path: its proxy, the last properties seen
     * (kept when the daemon exits and the proxy goes invalid, so the page
     * still shows what happened), and its output.
     */
    const transactions = new Map();
    /** A path the user chose in the history; null: follow the active (or newest) transaction. */
    let pinned = null;
    /** The path whose lines the log pane shows, and the pane (attachLog). */
    let shown = null;
    let logElement = null;
    /** The daemon's unique name; undefined before the first answer, null when it has none. */
    let daemonOwner;
    /** Why the connection closed (a cockpit problem code), or null while it is open. */
    let closedProblem = null;
    /** Problems shown above the page: key -> text. 'connection' clears itself; the others are dismissed. */
    const problems = new Map();
    /** Bumped on every change the view must see (the view memoizes on it). */
    let revision = 0;

    let client = null;
    let manager = null;

    /*
     * Cancel and GetLog need administrative access (the daemon's check: root,
     * or what polkit allows). Cockpit knows whether this session has it;
     * without it the buttons are disabled and say why. The daemon stays the
     * judge: a refusal is still shown. The connection asks for Cockpit's
     * privileges ({ superuser: 'try' }), which are chosen when it opens: when
     * the session gains or drops administrative access, it is opened again.
     */
    const permission = cockpit.permission({ admin: true });
    let lastAllowed = permission.allowed;
    permission.addEventListener('changed', function () {
        const before = lastAllowed;
        lastAllowed = permission.allowed;
        if (before !== null && before !== undefined && before !== lastAllowed && client !== null) reopen();
        changed();
    });

    /** Lines of the shown transaction not yet in the pane. */
    let pendingLines = [];
    let renderTimer = null;
    function changed() {
        revision++;
        if (renderTimer === null) {
            renderTimer = window.setTimeout(function () {
                renderTimer = null;
                flushLog();
                onChange();
            }, RENDER_DELAY_MS);
        }
    }

    function setProblem(key, text) {
        if (text) problems.set(key, text);
        else if (!problems.has(key)) return;
        else problems.delete(key);
        changed();
    }

    /** The record of a transaction path, made (with a proxy on the current connection) when new. */
    function record(path) {
        let rec = transactions.get(path);
        if (!rec) {
            rec = { path, id: idOf(path), props: null, lines: [], dropped: 0, proxy: null };
            transactions.set(path, rec);
        }
        if (rec.proxy === null && client !== null) watch(rec);
        return rec;
    }

    function watch(rec) {
        const proxy = client.proxy(TX_IFACE, rec.path);
        rec.proxy = proxy;
        const take = () => {
            if (!proxy.valid || rec.proxy !== proxy) return;
            rec.props = {
                Id: proxy.Id,
                Deployment: proxy.Deployment,
                Phase: proxy.Phase,
                State: proxy.State,
                Progress: proxy.Progress,
                CurrentHook: proxy.CurrentHook,
                Hooks: proxy.Hooks || [],
                Error: proxy.Error,
                ErrorMessage: proxy.ErrorMessage,
                StartedUsec: proxy.StartedUsec,
                FinishedUsec: proxy.FinishedUsec,
            };
            changed();
        };
        proxy.addEventListener('changed', take);
        proxy.wait(() => {
            // An object pruned from the daemon's history before we saw it.
            if (!proxy.valid && rec.props === null && rec.proxy === proxy) {
                transactions.delete(rec.path);
                proxy.removeEventListener('changed', take);
                changed();
            }
            take();
        });
    }

    function addLine(path, kind, hook, text) {
        const rec = record(path);
        const line = { kind, hook, text };
        rec.lines.push(line);
        if (rec.lines.length > MAX_LOG_LINES) {
            rec.lines.shift();
            rec.dropped++;
        }
        if (path === shown && logElement !== null) {
            pendingLines.push(line);
            if (renderTimer === null) changed();
        }
    }

    /*
     * Transaction signals, for every transaction path, in one match rule:
     * output lines and hook events go to that transaction's log pane.
     * Progress and state come from PropertiesChanged (the proxies).
     */
    function onTransactionSignal(path, iface, signal, args) {
        switch (signal) {
        case 'Message':
            addLine(path, 'output', args[0], args[1]);
            break;
        case 'HookStarted':
            addLine(path, 'event', args[0], cockpit.format(_('started ($0 of $1)'), args[1] + 1, args[2]));
            break;
        case 'HookFinished':
            addLine(path, 'event', args[0], label(args[1]) + (args[2] ? ' — ' + args[2] : ''));
            break;
        case 'Finished':
            addLine(path, 'event', '', cockpit.format(_('Phase finished: $0'), label(args[0])) +
                    (args[1] ? ' (' + args[1] + (args[2] ? ': ' + args[2] : '') + ')' : ''));
            break;
        default:
            break;
        }
    }

    function refreshList() {
        const c = client;
        c.call(MANAGER_PATH, MANAGER_IFACE, 'ListTransactions', [])
                .then(function (reply) {
                    if (c !== client) return;
                    setProblem('list', null);
                    for (const path of reply[0]) record(path);
                    changed();
                })
                .catch(function (err) {
                    if (c !== client || closedProblem !== null) return;
                    setProblem('list', cockpit.format(_('Cannot list transactions: $0'), errorText(err)));
                });
    }

    /*
     * Open the connection: the manager's proxy, the signal subscription
     * (before ListTransactions, so nothing of a transaction starting
     * meanwhile is lost), then the list. A closed connection (the name
     * cannot be found or started, the bridge went away) is opened again
     * after RECONNECT_DELAY_MS; records keep their last properties and
     * output meanwhile.
     */
    function connect() {
        const c = cockpit.dbus(SERVICE, { bus: 'system', superuser: 'try' });
        client = c;
        closedProblem = null;
        daemonOwner = undefined;
        const m = c.proxy(MANAGER_IFACE, MANAGER_PATH);
        manager = m;
        c.subscribe({ interface: TX_IFACE, path_namespace: TX_PATH_PREFIX }, function (...args) {
            if (c === client) onTransactionSignal(...args);
        });

        m.addEventListener('TransactionStarted', function (event, path, deployment, phase) {
            if (c !== client) return;
            const rec = record(path);
            if (rec.lines.length > 0)
                addLine(path, 'event', '', cockpit.format(_('$0 phase started'), PHASE_LABELS[phase] || phase));
            changed();
        });
        // The transaction's PropertiesChanged precedes this signal; render
        // again for the manager's own State and ActiveTransaction.
        m.addEventListener('TransactionFinished', changed);
        m.addEventListener('changed', function () {
            if (c !== client) return;
            if (m.ActiveTransaction && m.ActiveTransaction !== NO_TRANSACTION) record(m.ActiveTransaction);
            changed();
        });

        // The daemon exits when idle and is started again on demand: when a
        // new owner appears, its transactions are read again (the proxies
        // follow the name on their own).
        c.addEventListener('owner', function (event, owner) {
            if (c !== client) return;
            const before = daemonOwner;
            daemonOwner = owner;
            if (owner && before !== undefined && before !== owner) refreshList();
            changed();
        });
        c.addEventListener('close', function (event, options) {
            if (c !== client) return;
            closedProblem = options.problem || 'disconnected';
            setProblem('list', null);
            setProblem('connection', closedProblem === 'not-found'
                ? cockpit.format(_('$0 is not on the system bus and cannot be started: is bootc-prestage installed?'), SERVICE)
                : cockpit.format(_('Lost the connection to $0: $1'), SERVICE, cockpit.message(options)));
            for (const rec of transactions.values()) rec.proxy = null;
            window.setTimeout(function () {
                if (c === client) connect();
            }, RECONNECT_DELAY_MS);
            changed();
        });
        m.wait(function () {
            if (c === client && m.valid) setProblem('connection', null);
            changed();
        });
        for (const rec of transactions.values()) record(rec.path);
        refreshList();
    }

    /** Open the connection again (the session's privileges changed). */
    function reopen() {
        const old = client;
        client = null;
        for (const rec of transactions.values()) rec.proxy = null;
        old.close();
        connect();
    }

    /* Which transaction the card shows: a pinned one, else the active one, else the newest. */
    function followedPath() {
        if (pinned && transactions.has(pinned)) return pinned;
        const active = manager && manager.valid ? manager.ActiveTransaction : NO_TRANSACTION;
        if (active && active !== NO_TRANSACTION) return active;
        let best = null;
        let bestTime = -1;
        for (const rec of transactions.values()) {
            const t = rec.props ? rec.props.StartedUsec || 0 : -1;
            if (t > bestTime) {
                best = rec.path;
                bestTime = t;
            }
        }
        return best;
    }

    function daemonView() {
        if (manager && manager.valid) {
            return {
                state: manager.State,
                text: cockpit.format(_('bootc-prestaged is $0'), label(manager.State).toLowerCase()),
                version: manager.Version || '',
            };
        }
        if (closedProblem !== null) return { state: 'unavailable', text: _('bootc-prestaged is not available'), version: '' };
        if (daemonOwner === null) return { state: 'stopped', text: _('bootc-prestaged is not running; it starts on demand'), version: '' };
        return { state: 'unknown', text: _('Connecting…'), version: '' };
    }

    /** Everything the view renders, read now. */
    function view() {
        const path = followedPath();
        const history = Array.from(transactions.values()).filter((r) => r.props !== null);
        history.sort((a, b) => (b.props.StartedUsec || 0) - (a.props.StartedUsec || 0));
        return {
            revision,
            daemon: daemonView(),
            problems: Array.from(problems.entries()),
            followed: path ? transactions.get(path) : null,
            pinned: pinned !== null && transactions.has(pinned),
            history,
            // null: Cockpit does not know yet (the buttons stay enabled).
            admin: permission.allowed,
        };
    }

    /* The log pane: the followed transaction's lines; a pane or path change rebuilds it. */
    function attachLog(element, path) {
        logElement = element;
        shown = path;
        pendingLines = [];
        if (element === null) return;
        element.replaceChildren();
        const rec = path ? transactions.get(path) : undefined;
        if (!rec) return;
        if (rec.dropped > 0) {
            element.appendChild(logNode({
                kind: 'note', hook: '', text: cockpit.format(_('$0 earlier lines not shown; load the full log'), rec.dropped),
            }));
        }
        for (const line of rec.lines) element.appendChild(logNode(line));
        element.scrollTop = element.scrollHeight;
    }

    function logNode(line) {
        const node = document.createElement('div');
        node.className = 'log-line log-' + line.kind;
        const hook = document.createElement('span');
        hook.className = 'log-hook';
        hook.textContent = line.hook ? line.hook + ': ' : '';
        const text = document.createElement('span');
        text.className = 'log-text';
        text.textContent = line.text;
        node.append(hook, text);
        return node;
    }

    /** Append the pending lines; a pane scrolled to the bottom stays there. */
    function flushLog() {
        const log = logElement;
        const lines = pendingLines;
        pendingLines = [];
        if (log === null || lines.length === 0) return;
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        const fragment = document.createDocumentFragment();
        for (const line of lines.slice(-MAX_LOG_LINES)) fragment.appendChild(logNode(line));
        log.appendChild(fragment);
        let excess = log.childElementCount - (MAX_LOG_LINES + 1);
        while (excess-- > 0) log.removeChild(log.firstElementChild);
        if (atBottom) log.scrollTop = log.scrollHeight;
    }

    function pin(path) {
        pinned = path;
        changed();
    }

    /** Cancel the shown transaction; resolves when the daemon answered (a refusal becomes a problem). */
    function cancel(path) {
        const c = client;
        return c.call(path, TX_IFACE, 'Cancel', [])
                .then(function () { setProblem('cancel', null); })
                .catch(function (err) {
                    setProblem('cancel', cockpit.format(_('Cannot cancel: $0'), errorText(err)));
                });
    }

    /*
     * GetLog needs administrative access (hook output may hold secrets):
     * with it the whole output replaces the pane; otherwise the error says why.
     */
    function loadFullLog(path) {
        const rec = transactions.get(path);
        return client.call(path, TX_IFACE, 'GetLog', [{ 'max-lines': cockpit.variant('u', FULL_LOG_LINES) }])
                .then(function (reply) {
                    setProblem('log', null);
                    const lines = reply[0];
                    rec.lines = lines.slice(-MAX_LOG_LINES).map(function (text) { return { kind: 'full', hook: '', text }; });
                    rec.dropped = Math.max(0, lines.length - MAX_LOG_LINES);
                    if (path === shown && logElement !== null) attachLog(logElement, path);
                    changed();
                })
                .catch(function (err) {
                    setProblem('log', cockpit.format(_('Cannot read the full log: $0'), errorText(err)));
                });
    }

    // Durations of running transactions advance without any signal.
    window.setInterval(function () {
        const rec = shown ? transactions.get(shown) : undefined;
        if (rec && rec.props && WORKING_STATES.has(rec.props.State)) changed();
    }, 1000);

    connect();
    changed();

    return {
        view,
        attachLog,
        pin,
        follow: () => pin(null),
        cancel,
        loadFullLog,
        dismiss: (key) => setProblem(key, null),
    };
}
