/*
 * bootc-prestage Cockpit page: the manager's state, the followed
 * transaction's progress, hooks and output, and every transaction the
 * daemon still exports, live from org.containers.bootc.PreStage.
 *
 * What must stay true:
 * - Nothing from the bus reaches innerHTML: hook names, status texts and
 *   output lines are text the hooks chose (textContent only).
 * - Late subscribers lose nothing the daemon keeps: properties (GetAll, then
 *   PropertiesChanged) carry the whole state, so the page shows a running or
 *   finished transaction correctly whenever it is opened. Output lines are
 *   only in Message signals; the full output is behind GetLog (root only).
 * - One signal subscription covers every transaction path, made before
 *   ListTransactions, so no Message of a transaction that starts while the
 *   page loads is lost for want of a proxy.
 * - 't' properties arrive as JS numbers (the daemon keeps them below 2^53).
 */
/* global cockpit */
(function () {
    'use strict';

    const _ = cockpit.gettext;

    const SERVICE = 'org.containers.bootc.PreStage';
    const MANAGER_PATH = '/org/containers/bootc/PreStage';
    const MANAGER_IFACE = 'org.containers.bootc.PreStage';
    const TX_IFACE = 'org.containers.bootc.PreStage.Transaction';
    const TX_PATH_PREFIX = '/org/containers/bootc/PreStage/Transaction';
    const NO_TRANSACTION = '/';
    /** Lines kept per transaction in the page; GetLog has them all. */
    const MAX_LOG_LINES = 2000;
    /** Rendering is coalesced to this period: signals can come at 20 per second per hook. */
    const RENDER_DELAY_MS = 50;
    const FULL_LOG_LINES = 100000;
    /** After the connection closed (the service is missing, the bridge died), try again this late. */
    const RECONNECT_DELAY_MS = 10000;

    /** States in which a transaction is still working (Transaction.State). */
    const WORKING_STATES = new Set(['queued', 'preparing', 'cancelling', 'rolling-back', 'committing', 'aborting']);
    /** States in which Cancel() can still change something. */
    const CANCELLABLE_STATES = new Set(['queued', 'preparing']);

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
    const PHASE_LABELS = { prepare: _('Prepare'), commit: _('Commit'), abort: _('Abort') };

    /** Colour class of a transaction state or hook result (CSS keys off data-tone). */
    function toneOf(state) {
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

    function label(state) {
        return STATE_LABELS[state] || state || '';
    }

    function $(id) {
        return document.getElementById(id);
    }

    function el(tag, props, children) {
        const node = document.createElement(tag);
        for (const [k, v] of Object.entries(props || {})) {
            if (k === 'text') node.textContent = v;
            else if (k === 'className') node.className = v;
            else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'title' || k === 'role')
                node.setAttribute(k, v);
            else node[k] = v;
        }
        for (const c of children || []) node.appendChild(c);
        return node;
    }

    function badge(state) {
        return el('span', { className: 'badge', 'data-tone': toneOf(state), 'data-state': state, text: label(state) });
    }

    function idOf(path) {
        return path.slice(path.lastIndexOf('/') + 1);
    }

    function formatTime(usec) {
        if (!usec) return '';
        return new Date(usec / 1000).toLocaleString();
    }

    function formatDuration(startUsec, endUsec) {
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

    function clampPercent(v) {
        const n = Number(v);
        if (!Number.isFinite(n)) return 0;
        return Math.min(100, Math.max(0, Math.round(n)));
    }

    /*
     * A D-Bus error for people. AccessDenied from the bus policy carries a
     * dump of the matched rules; what the viewer needs is the reason.
     */
    function errorText(err) {
        if (!err) return '';
        if (err.name === 'org.freedesktop.DBus.Error.AccessDenied')
            return _('not permitted: this needs administrative access');
        if (err.name && err.message) return err.name + ': ' + err.message;
        return cockpit.message(err);
    }

    /*
     * Model. One record per transaction path: its proxy, the last
     * properties seen (kept when the daemon exits and the proxy goes
     * invalid, so the page still shows what happened), and its output.
     */
    const transactions = new Map();
    /** A path the user clicked in the table; null: follow the active (or newest) transaction. */
    let pinned = null;
    /** The path the detail card shows, as last rendered. */
    let shown = null;
    /** The daemon's unique name; undefined before the first answer, null when it has none. */
    let daemonOwner;
    /** Why the connection closed (a cockpit problem code), or null while it is open. */
    let closedProblem = null;
    const problems = new Map();
    /*
     * Cancel and GetLog are root only (bus policy and daemon). Cockpit knows
     * whether this session has administrative access; without it the
     * buttons are disabled instead of failing. The daemon stays the judge:
     * a refusal is still shown.
     */
    const permission = cockpit.permission({ admin: true });
    permission.addEventListener('changed', function () { scheduleRender(); });

    /** The connection, replaced after a close (connect()). */
    let client = null;
    let manager = null;

    /** Show (or with null, clear) one problem; the connection's cannot be dismissed, it clears itself. */
    function setProblem(key, text) {
        if (text) problems.set(key, text);
        else problems.delete(key);
        const box = $('problem');
        box.replaceChildren.apply(box, Array.from(problems.entries()).map(function ([k, t]) {
            const line = el('div', { className: 'problem', 'data-problem': k }, [el('span', { text: t })]);
            if (k !== 'connection') {
                const dismiss = el('button', { type: 'button', className: 'link-button dismiss', text: _('Dismiss') });
                dismiss.addEventListener('click', function () { setProblem(k, null); });
                line.appendChild(dismiss);
            }
            return line;
        }));
        box.hidden = problems.size === 0;
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
            scheduleRender();
        };
        proxy.addEventListener('changed', take);
        proxy.wait(() => {
            // An object pruned from the daemon's history before we saw it.
            if (!proxy.valid && rec.props === null && rec.proxy === proxy) {
                transactions.delete(rec.path);
                proxy.removeEventListener('changed', take);
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
        if (path === shown) appendLogLine(line, true);
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
                    scheduleRender();
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
        manager = c.proxy(MANAGER_IFACE, MANAGER_PATH);
        c.subscribe({ interface: TX_IFACE, path_namespace: TX_PATH_PREFIX }, onTransactionSignal);

        manager.addEventListener('TransactionStarted', function (event, path, deployment, phase) {
            const rec = record(path);
            if (rec.lines.length > 0)
                addLine(path, 'event', '', cockpit.format(_('$0 phase started'), PHASE_LABELS[phase] || phase));
            scheduleRender();
        });
        manager.addEventListener('TransactionFinished', function () {
            // The transaction's PropertiesChanged precedes this signal; render
            // again for the manager's own State and ActiveTransaction.
            scheduleRender();
        });
        manager.addEventListener('changed', function () {
            if (manager.ActiveTransaction && manager.ActiveTransaction !== NO_TRANSACTION)
                record(manager.ActiveTransaction);
            scheduleRender();
        });

        // The daemon exits when idle and is started again on demand: when a
        // new owner appears, its transactions are read again (the proxies
        // follow the name on their own).
        c.addEventListener('owner', function (event, owner) {
            if (c !== client) return;
            const before = daemonOwner;
            daemonOwner = owner;
            if (owner && before !== undefined && before !== owner) refreshList();
            scheduleRender();
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
            scheduleRender();
        });
        manager.wait(function () {
            if (c === client && manager.valid) setProblem('connection', null);
            scheduleRender();
        });
        for (const rec of transactions.values()) record(rec.path);
        refreshList();
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

    let renderTimer = null;
    function scheduleRender() {
        if (renderTimer === null) renderTimer = window.setTimeout(render, RENDER_DELAY_MS);
    }

    function render() {
        renderTimer = null;
        renderDaemon();
        renderTransaction();
        renderHistory();
    }

    function renderDaemon() {
        const box = $('daemon');
        let state;
        let text;
        if (manager && manager.valid) {
            state = manager.State;
            text = cockpit.format(_('bootc-prestaged is $0'), label(state).toLowerCase());
            $('daemon-version').textContent = manager.Version ? cockpit.format(_('version $0'), manager.Version) : '';
        } else if (closedProblem !== null) {
            state = 'unavailable';
            text = _('bootc-prestaged is not available');
            $('daemon-version').textContent = '';
        } else if (daemonOwner === null) {
            state = 'stopped';
            text = _('bootc-prestaged is not running; it starts on demand');
            $('daemon-version').textContent = '';
        } else {
            state = 'unknown';
            text = _('Connecting…');
        }
        box.setAttribute('data-state', state);
        $('daemon-state').textContent = text;
    }

    function setProgress(bar, fill, percent) {
        bar.setAttribute('aria-valuenow', String(percent));
        bar.setAttribute('aria-valuetext', percent + ' %');
        // CSSOM, not a style attribute: Cockpit's CSP allows only the former.
        fill.style.width = percent + '%';
    }

    function renderTransaction() {
        const path = followedPath();
        const rec = path ? transactions.get(path) : undefined;
        const card = $('transaction');
        $('follow').hidden = pinned === null;
        if (!rec || !rec.props) {
            $('tx-title').textContent = rec ? cockpit.format(_('Transaction $0'), rec.id) : _('No transaction yet');
            $('tx-body').hidden = true;
            $('cancel').hidden = true;
            card.setAttribute('data-state', '');
            setShown(null);
            return;
        }
        const p = rec.props;
        $('tx-body').hidden = false;
        $('tx-title').textContent = cockpit.format(_('Transaction $0'), p.Id || rec.id);
        card.setAttribute('data-state', p.State);
        card.setAttribute('data-path', rec.path);
        const state = $('tx-state');
        state.textContent = label(p.State);
        state.setAttribute('data-state', p.State);
        state.setAttribute('data-tone', toneOf(p.State));
        $('tx-phase').textContent = PHASE_LABELS[p.Phase] || p.Phase;
        $('tx-deployment').textContent = p.Deployment;
        $('tx-current-hook').textContent = p.CurrentHook || '—';
        $('tx-started').textContent = formatTime(p.StartedUsec);
        $('tx-duration').textContent = formatDuration(p.StartedUsec, p.FinishedUsec);

        const percent = clampPercent(p.Progress);
        setProgress($('tx-progress'), $('tx-progress-bar'), percent);
        $('tx-progress').setAttribute('data-tone', toneOf(p.State));
        $('tx-progress-text').textContent = percent + ' %';

        $('tx-error').hidden = !p.Error;
        $('tx-error-name').textContent = p.Error || '';
        $('tx-error-message').textContent = p.ErrorMessage || '';

        $('cancel').hidden = !CANCELLABLE_STATES.has(p.State);
        const denied = permission.allowed === false;
        $('cancel').disabled = denied;
        $('cancel').title = denied ? _('Cancelling needs administrative access') : '';
        $('full-log').disabled = denied;
        $('full-log').title = denied ? _('The full log needs administrative access: hook output may hold secrets') : '';

        const body = $('hooks').tBodies[0];
        const rows = p.Hooks.map(function (h) {
            const [name, result, hookPercent, status] = h;
            const pc = clampPercent(hookPercent);
            const fill = el('div', { className: 'progress-bar' });
            const bar = el('div', {
                className: 'progress progress-small', role: 'progressbar', 'aria-valuemin': '0',
                'aria-valuemax': '100', 'aria-label': cockpit.format(_('Progress of $0'), name),
            }, [fill]);
            bar.setAttribute('data-tone', toneOf(result));
            setProgress(bar, fill, pc);
            return el('tr', { 'data-hook': name, 'data-result': result }, [
                el('td', { className: 'mono hook-name', text: name }),
                el('td', { className: 'hook-result' }, [badge(result)]),
                el('td', { className: 'hook-percent percent-col' }, [bar, el('span', { className: 'progress-text', text: pc + ' %' })]),
                el('td', { className: 'hook-status', text: status }),
            ]);
        });
        body.replaceChildren.apply(body, rows);
        setShown(rec.path);
    }

    function renderHistory() {
        const recs = Array.from(transactions.values()).filter(function (r) { return r.props !== null; });
        recs.sort(function (a, b) { return (b.props.StartedUsec || 0) - (a.props.StartedUsec || 0); });
        $('history').hidden = recs.length === 0;
        $('history-empty').hidden = recs.length > 0;
        const body = $('history').tBodies[0];
        const rows = recs.map(function (rec) {
            const p = rec.props;
            const error = p.Error ? p.Error.replace(/^org\.containers\.bootc\.PreStage\.Error\./, '') : '';
            const row = el('tr', {
                'data-path': rec.path, 'data-state': p.State, tabIndex: 0,
                title: p.ErrorMessage || p.Deployment,
            }, [
                el('td', { className: 'mono nowrap', text: p.Id || rec.id }),
                el('td', { className: 'mono deployment', text: p.Deployment.slice(p.Deployment.lastIndexOf('/') + 1) }),
                el('td', { className: 'nowrap', text: PHASE_LABELS[p.Phase] || p.Phase }),
                el('td', { className: 'nowrap' }, [badge(p.State)]),
                el('td', { className: 'history-error', text: error ? error + (p.ErrorMessage ? ': ' + p.ErrorMessage : '') : '' }),
                el('td', { className: 'nowrap', text: WORKING_STATES.has(p.State) ? '' : formatTime(p.FinishedUsec) }),
            ]);
            if (rec.path === shown) row.setAttribute('aria-selected', 'true');
            return row;
        });
        body.replaceChildren.apply(body, rows);
    }

    /* The log pane shows the followed transaction's lines; switching rebuilds it. */
    function setShown(path) {
        if (path === shown) return;
        shown = path;
        const log = $('log');
        log.replaceChildren();
        const rec = path ? transactions.get(path) : undefined;
        if (!rec) return;
        if (rec.dropped > 0)
            log.appendChild(el('div', { className: 'log-line log-note', text: cockpit.format(_('$0 earlier lines not shown; load the full log'), rec.dropped) }));
        for (const line of rec.lines) appendLogLine(line, false);
        log.scrollTop = log.scrollHeight;
    }

    function appendLogLine(line, live) {
        const log = $('log');
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        const node = el('div', { className: 'log-line log-' + line.kind }, [
            el('span', { className: 'log-hook', text: line.hook ? line.hook + ': ' : '' }),
            el('span', { className: 'log-text', text: line.text }),
        ]);
        log.appendChild(node);
        while (log.childElementCount > MAX_LOG_LINES + 1) log.removeChild(log.firstElementChild);
        if (live && atBottom) log.scrollTop = log.scrollHeight;
    }

    $('history').addEventListener('click', function (event) {
        const row = event.target.closest('tr[data-path]');
        if (!row) return;
        pinned = row.getAttribute('data-path');
        render();
    });
    $('history').addEventListener('keydown', function (event) {
        if (event.key !== 'Enter' && event.key !== ' ') return;
        const row = event.target.closest('tr[data-path]');
        if (!row) return;
        event.preventDefault();
        pinned = row.getAttribute('data-path');
        render();
    });
    $('follow').addEventListener('click', function () {
        pinned = null;
        render();
    });

    $('cancel').addEventListener('click', function () {
        const path = shown;
        if (!path) return;
        const button = $('cancel');
        button.disabled = true;
        client.call(path, TX_IFACE, 'Cancel', [])
                .then(function () { setProblem('cancel', null); })
                .catch(function (err) {
                    setProblem('cancel', cockpit.format(_('Cannot cancel: $0'), errorText(err)));
                })
                .finally(function () {
                    button.disabled = false;
                    render();
                });
    });

    // GetLog is root only (hook output may hold secrets): with administrative
    // access the whole output replaces the pane; otherwise the error says why.
    $('full-log').addEventListener('click', function () {
        const path = shown;
        if (!path) return;
        const rec = transactions.get(path);
        client.call(path, TX_IFACE, 'GetLog', [{ 'max-lines': cockpit.variant('u', FULL_LOG_LINES) }])
                .then(function (reply) {
                    setProblem('log', null);
                    const lines = reply[0];
                    rec.lines = lines.slice(-MAX_LOG_LINES).map(function (text) { return { kind: 'full', hook: '', text }; });
                    rec.dropped = Math.max(0, lines.length - MAX_LOG_LINES);
                    shown = null;
                    render();
                })
                .catch(function (err) {
                    setProblem('log', cockpit.format(_('Cannot read the full log: $0'), errorText(err)));
                });
    });

    // Durations of running transactions advance without any signal.
    window.setInterval(function () {
        const rec = shown ? transactions.get(shown) : undefined;
        if (rec && rec.props && WORKING_STATES.has(rec.props.State)) scheduleRender();
    }, 1000);

    cockpit.translate();
    connect();
    scheduleRender();
}());
