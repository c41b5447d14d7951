/**
 * The D-Bus contract as plain data: bus name, object paths, and one member
 * table per interface. These tables are the single source of truth for
 * dispatch (which methods exist, their exact input signature, who may call
 * them), for the generated introspection, and for the checks that the XML
 * files under interfaces/ say the same thing (test/unit/bus-introspection).
 *
 * Changing a name, an argument or a type here changes the public interface:
 * the XML files and docs/design.md must change with it.
 */

/** The well-known name the daemon owns on the system bus. */
export const BUS_NAME = 'org.containers.bootc.PreStage';
export const MANAGER_INTERFACE = 'org.containers.bootc.PreStage';
export const TRANSACTION_INTERFACE = 'org.containers.bootc.PreStage.Transaction';
export const MANAGER_PATH = '/org/containers/bootc/PreStage';
export const TRANSACTION_PATH_PREFIX = '/org/containers/bootc/PreStage/Transaction';

/**
 * The D-Bus message header flag ALLOW_INTERACTIVE_AUTHORIZATION: the caller
 * is ready to wait while polkit asks its authentication agent (a password
 * prompt), as `systemctl` is on a terminal.
 */
export const ALLOW_INTERACTIVE_AUTHORIZATION = 0x4;

/** Transaction ids are single object-path elements: no escaping ever needed. */
const TRANSACTION_ID = /^[A-Za-z0-9_]{1,255}$/;

export function isTransactionId(id: string): boolean {
  return TRANSACTION_ID.test(id);
}

/** The object path of a transaction; throws on an id that is not [A-Za-z0-9_]+. */
export function transactionPath(id: string): string {
  if (!isTransactionId(id)) throw new Error(`invalid transaction id '${id}'`);
  return `${TRANSACTION_PATH_PREFIX}/${id}`;
}

/** The id in a transaction object path, or null when `path` is not one. */
export function transactionIdFromPath(path: string): string | null {
  const prefix = `${TRANSACTION_PATH_PREFIX}/`;
  if (!path.startsWith(prefix)) return null;
  const id = path.slice(prefix.length);
  return isTransactionId(id) ? id : null;
}

export interface ArgSpec {
  readonly name: string;
  /** One complete D-Bus type. */
  readonly type: string;
}

export interface MethodSpec {
  readonly name: string;
  readonly in: readonly ArgSpec[];
  readonly out: readonly ArgSpec[];
  /**
   * It changes something (or reveals hook output): uid 0 may call it, and
   * any other caller only when polkit authorizes `action` for it (checked
   * by the object server before the handler runs; README.md, "Security").
   */
  readonly privileged: boolean;
  /** The polkit action that authorizes a non-root caller (privileged members only). */
  readonly action?: PolkitAction;
}

/**
 * The polkit actions, one per kind of change; defined (descriptions,
 * defaults) in packaging/polkit/org.containers.bootc.PreStage.policy,
 * installed in /usr/share/polkit-1/actions/.
 */
export const POLKIT_ACTIONS = {
  start: 'org.containers.bootc.prestage.start',
  commit: 'org.containers.bootc.prestage.commit',
  abort: 'org.containers.bootc.prestage.abort',
  reconcile: 'org.containers.bootc.prestage.reconcile',
  manageHooks: 'org.containers.bootc.prestage.manage-hooks',
  cancel: 'org.containers.bootc.prestage.cancel',
  readLog: 'org.containers.bootc.prestage.read-log',
} as const;

export type PolkitAction = typeof POLKIT_ACTIONS[keyof typeof POLKIT_ACTIONS];

export interface SignalSpec {
  readonly name: string;
  readonly args: readonly ArgSpec[];
}

export interface PropertySpec {
  readonly name: string;
  readonly type: string;
  /** Every property this service exposes is read-only; Set is refused. */
  readonly access: 'read';
}

export interface InterfaceSpec {
  readonly name: string;
  readonly methods: readonly MethodSpec[];
  readonly signals: readonly SignalSpec[];
  readonly properties: readonly PropertySpec[];
}

/** The D-Bus signature of an argument list: the types concatenated. */
export function signatureOf(args: readonly ArgSpec[]): string {
  return args.map((a) => a.type).join('');
}

export function findMethod(spec: InterfaceSpec, name: string): MethodSpec | undefined {
  return spec.methods.find((m) => m.name === name);
}

export function findSignal(spec: InterfaceSpec, name: string): SignalSpec | undefined {
  return spec.signals.find((s) => s.name === name);
}

export function findProperty(spec: InterfaceSpec, name: string): PropertySpec | undefined {
  return spec.properties.find((p) => p.name === name);
}

/** Names of the methods of an interface table, as a string-literal union. */
export type MethodName<T extends InterfaceSpec> = T['methods'][number]['name'];
/** Names of the properties of an interface table, as a string-literal union. */
export type PropertyName<T extends InterfaceSpec> = T['properties'][number]['name'];
/** Names of the signals of an interface table, as a string-literal union. */
export type SignalName<T extends InterfaceSpec> = T['signals'][number]['name'];

const arg = (name: string, type: string): ArgSpec => ({ name, type });

/** org.containers.bootc.PreStage at /org/containers/bootc/PreStage. */
export const MANAGER = {
  name: MANAGER_INTERFACE,
  methods: [
    {
      name: 'StartPreStage',
      in: [arg('deployment', 's'), arg('options', 'a{sv}')],
      out: [arg('transaction', 'o')],
      privileged: true,
      action: POLKIT_ACTIONS.start,
    },
    {
      name: 'CommitPreStage',
      in: [arg('deployment', 's'), arg('options', 'a{sv}')],
      out: [arg('transaction', 'o')],
      privileged: true,
      action: POLKIT_ACTIONS.commit,
    },
    {
      name: 'AbortPreStage',
      in: [arg('deployment', 's'), arg('options', 'a{sv}')],
      out: [arg('transaction', 'o')],
      privileged: true,
      action: POLKIT_ACTIONS.abort,
    },
    {
      name: 'Reconcile',
      in: [arg('options', 'a{sv}')],
      out: [arg('transactions', 'ao')],
      privileged: true,
      action: POLKIT_ACTIONS.reconcile,
    },
    {
      name: 'RegisterHook',
      in: [arg('name', 's'), arg('definition', 'a{sv}'), arg('options', 'a{sv}')],
      out: [],
      privileged: true,
      action: POLKIT_ACTIONS.manageHooks,
    },
    {
      name: 'UnregisterHook',
      in: [arg('name', 's')],
      out: [],
      privileged: true,
      action: POLKIT_ACTIONS.manageHooks,
    },
    {
      name: 'ListHooks',
      in: [arg('deployment', 's')],
      out: [arg('hooks', 'a(sa{sv})')],
      privileged: false,
    },
    {
      name: 'ListTransactions',
      in: [],
      out: [arg('transactions', 'ao')],
      privileged: false,
    },
  ],
  signals: [
    {
      name: 'TransactionStarted',
      args: [arg('transaction', 'o'), arg('deployment', 's'), arg('phase', 's')],
    },
    {
      name: 'TransactionFinished',
      args: [arg('transaction', 'o'), arg('state', 's'), arg('error', 's')],
    },
  ],
  properties: [
    { name: 'Version', type: 's', access: 'read' },
    { name: 'State', type: 's', access: 'read' },
    { name: 'ActiveTransaction', type: 'o', access: 'read' },
  ],
} as const satisfies InterfaceSpec;

/** org.containers.bootc.PreStage.Transaction at .../PreStage/Transaction/<id>. */
export const TRANSACTION = {
  name: TRANSACTION_INTERFACE,
  methods: [
    { name: 'Cancel', in: [], out: [], privileged: true, action: POLKIT_ACTIONS.cancel },
    {
      name: 'GetLog',
      in: [arg('options', 'a{sv}')],
      out: [arg('lines', 'as')],
      privileged: true,
      action: POLKIT_ACTIONS.readLog,
    },
  ],
  signals: [
    { name: 'HookStarted', args: [arg('hook', 's'), arg('index', 'u'), arg('count', 'u')] },
    { name: 'HookProgress', args: [arg('hook', 's'), arg('percent', 'u'), arg('status', 's')] },
    { name: 'HookFinished', args: [arg('hook', 's'), arg('result', 's'), arg('message', 's')] },
    { name: 'Message', args: [arg('hook', 's'), arg('line', 's')] },
    { name: 'Finished', args: [arg('state', 's'), arg('error', 's'), arg('message', 's')] },
  ],
  properties: [
    { name: 'Id', type: 's', access: 'read' },
    { name: 'Deployment', type: 's', access: 'read' },
    { name: 'Phase', type: 's', access: 'read' },
    { name: 'State', type: 's', access: 'read' },
    { name: 'Progress', type: 'u', access: 'read' },
    { name: 'CurrentHook', type: 's', access: 'read' },
    { name: 'Hooks', type: 'a(ssus)', access: 'read' },
    { name: 'Error', type: 's', access: 'read' },
    { name: 'ErrorMessage', type: 's', access: 'read' },
    { name: 'StartedUsec', type: 't', access: 'read' },
    { name: 'FinishedUsec', type: 't', access: 'read' },
  ],
} as const satisfies InterfaceSpec;

/** Our own interfaces, in the order their XML files document them. */
export const SERVICE_INTERFACES: readonly InterfaceSpec[] = [MANAGER, TRANSACTION];

// The standard interfaces every object answers (D-Bus specification,
// "Standard Interfaces"). Listed in introspection as sd-bus and GDBus do.

export const PEER = {
  name: 'org.freedesktop.DBus.Peer',
  methods: [
    { name: 'Ping', in: [], out: [], privileged: false },
    { name: 'GetMachineId', in: [], out: [arg('machine_uuid', 's')], privileged: false },
  ],
  signals: [],
  properties: [],
} as const satisfies InterfaceSpec;

export const INTROSPECTABLE = {
  name: 'org.freedesktop.DBus.Introspectable',
  methods: [
    { name: 'Introspect', in: [], out: [arg('xml_data', 's')], privileged: false },
  ],
  signals: [],
  properties: [],
} as const satisfies InterfaceSpec;

export const PROPERTIES = {
  name: 'org.freedesktop.DBus.Properties',
  methods: [
    {
      name: 'Get',
      in: [arg('interface_name', 's'), arg('property_name', 's')],
      out: [arg('value', 'v')],
      privileged: false,
    },
    {
      name: 'GetAll',
      in: [arg('interface_name', 's')],
      out: [arg('props', 'a{sv}')],
      privileged: false,
    },
    {
      name: 'Set',
      in: [arg('interface_name', 's'), arg('property_name', 's'), arg('value', 'v')],
      out: [],
      privileged: false,
    },
  ],
  signals: [
    {
      name: 'PropertiesChanged',
      args: [
        arg('interface_name', 's'),
        arg('changed_properties', 'a{sv}'),
        arg('invalidated_properties', 'as'),
      ],
    },
  ],
  properties: [],
} as const satisfies InterfaceSpec;

/** The standard interfaces, in the order introspection lists them. */
export const STANDARD_INTERFACES: readonly InterfaceSpec[] = [PEER, INTROSPECTABLE, PROPERTIES];
