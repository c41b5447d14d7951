import test from 'ava';
import { resolveBusAddress } from '../../service/bus/connection.js';

test('system - DBUS_SYSTEM_BUS_ADDRESS when set, else the standard socket', (t) => {
  t.is(resolveBusAddress('system', { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/tmp/sys' }), 'unix:path=/tmp/sys');
  t.is(resolveBusAddress('system', {}), 'unix:path=/run/dbus/system_bus_socket');
});

test('session - DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus, else a clear error', (t) => {
  t.is(resolveBusAddress('session', { DBUS_SESSION_BUS_ADDRESS: 'unix:path=/tmp/s' }), 'unix:path=/tmp/s');
  t.is(resolveBusAddress('session', { XDG_RUNTIME_DIR: '/run/user/0' }), 'unix:path=/run/user/0/bus');
  t.throws(() => resolveBusAddress('session', {}), { message: /no session bus/ });
});

test('an address is used as given; anything else is refused with the reason', (t) => {
  t.is(resolveBusAddress('unix:path=/tmp/bus,guid=00'), 'unix:path=/tmp/bus,guid=00');
  t.is(resolveBusAddress('tcp:host=localhost,port=1'), 'tcp:host=localhost,port=1');
  t.throws(() => resolveBusAddress('/tmp/bus'), { message: /not a bus/ });
  t.throws(() => resolveBusAddress('unix:abstract=/tmp/x'), { message: /abstract/ });
});
