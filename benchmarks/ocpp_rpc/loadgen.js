// An independent OCPP 1.6J load generator for benchmarks/ocpp_load.py: N charge points on ocpp-rpc (strict mode).
//
// Charge point i opens its websocket at t0 + i / connect-rate (a reconnect storm: every charger of a site comes
// back at once after a network blip), sends BootNotification, then one CALL per 1/msg-rate seconds (Heartbeat and
// MeterValues in turn, each charger at its own random phase) until duration-s after t0. It answers what a central
// system sends (TriggerMessage, ChangeConfiguration, SetChargingProfile, local list, ...) as a compliant charge
// point would, and sends the StatusNotification a TriggerMessage asks for.
//
// Measured: websocket open (connect() until the upgrade is done), BootNotification round trip, and the round trip
// of every periodic CALL (from call() to its reply: a CALL that waits behind a stalled one counts its wait).
// A CALL unanswered after --call-timeout-ms is a timeout. Prints one JSON line on stdout at the end.
//
//   node loadgen.js --url ws://127.0.0.1:PORT/ocpp --count 1000 [--prefix lg] [--connect-rate 200]
//        [--msg-rate 1] [--duration-s 30] [--call-timeout-ms 10000]
'use strict';
const { RPCClient } = require('ocpp-rpc');

function parseArgs(argv) {
    const a = { url: null, count: 100, prefix: 'lg', connectRate: 200, msgRate: 1, durationS: 30,
                callTimeoutMs: 10000 };
    const names = { '--url': 'url', '--count': 'count', '--prefix': 'prefix', '--connect-rate': 'connectRate',
                    '--msg-rate': 'msgRate', '--duration-s': 'durationS', '--call-timeout-ms': 'callTimeoutMs' };
    for (let i = 2; i < argv.length; i += 2) {
        const key = names[argv[i]];
        if (!key || i + 1 >= argv.length) throw new Error(`unknown or incomplete option ${argv[i]}`);
        a[key] = key === 'url' || key === 'prefix' ? argv[i + 1] : Number(argv[i + 1]);
    }
    if (!a.url) throw new Error('--url is required');
    return a;
}

const args = parseArgs(process.argv);
const now = () => Number(process.hrtime.bigint()) / 1e6;       // ms, monotonic
const iso = () => new Date().toISOString();
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

const stats = { open: [], boot: [], rt: [], rtSteady: [], timeouts: 0, connectFailures: 0, callErrors: 0,
                closedEarly: 0, strictFailures: 0, serverCalls: {} };
let allBootedAt = null;
let booted = 0;
const errorsSeen = new Set();

function note(e) {
    const text = String(e && e.message || e).slice(0, 200);
    if (errorsSeen.size < 5 && !errorsSeen.has(text)) {
        errorsSeen.add(text);
        process.stderr.write(`loadgen: ${text}\n`);
    }
}

function isTimeout(e) {
    return e && (e.name === 'TimeoutError' || /timed? ?out/i.test(String(e.message)));
}

function handleServerCalls(cli, id) {
    const count = (method) => { stats.serverCalls[method] = (stats.serverCalls[method] || 0) + 1; };
    cli.handle('TriggerMessage', ({ params }) => {
        count('TriggerMessage');
        if (params.requestedMessage === 'StatusNotification') {
            setImmediate(() => cli.call('StatusNotification', {
                connectorId: params.connectorId || 1, errorCode: 'NoError', status: 'Available', timestamp: iso(),
            }).catch(note));
        }
        return { status: 'Accepted' };
    });
    cli.handle('GetConfiguration', ({ params }) => {
        count('GetConfiguration');
        const known = { LocalAuthListEnabled: 'true', LocalAuthListMaxLength: '10000', SendLocalListMaxLength: '1000',
                        ChargeProfileMaxStackLevel: '10', ChargingScheduleAllowedChargingRateUnit: 'Current',
                        MeterValueSampleInterval: '0', SupportedFeatureProfiles:
                            'Core,LocalAuthListManagement,SmartCharging,RemoteTrigger' };
        const keys = params.key && params.key.length ? params.key : Object.keys(known);
        return { configurationKey: keys.filter((k) => k in known).map((k) => ({ key: k, readonly: false,
                                                                              value: known[k] })),
                 unknownKey: keys.filter((k) => !(k in known)) };
    });
    cli.handle('GetLocalListVersion', () => { count('GetLocalListVersion'); return { listVersion: 0 }; });
    cli.handle('GetCompositeSchedule', () => { count('GetCompositeSchedule'); return { status: 'Rejected' }; });
    cli.handle('DataTransfer', () => { count('DataTransfer'); return { status: 'UnknownVendorId' }; });
    // Everything else a 1.6 central system sends is answered with {status: Accepted} (strict mode checks it).
    cli.handle(({ method }) => { count(method); return { status: 'Accepted' }; });
    cli.on('strictValidationFailure', (e) => { stats.strictFailures += 1; note(e.error || e); });
}

async function chargePoint(i, t0, endAt) {
    const id = `${args.prefix}${String(i + 1).padStart(4, '0')}`;
    await sleep(t0 + (i * 1000) / args.connectRate - now());
    const cli = new RPCClient({ endpoint: args.url, identity: id, protocols: ['ocpp1.6'], strictMode: true,
                                reconnect: false, callTimeoutMs: args.callTimeoutMs, pingIntervalMs: 30000 });
    handleServerCalls(cli, id);
    let closed = false;
    cli.on('close', () => { closed = true; });
    const t = now();
    try {
        await Promise.race([cli.connect(), sleep(args.callTimeoutMs).then(() => {
            throw new Error(`${id}: websocket not open after ${args.callTimeoutMs} ms`);
        })]);
    } catch (e) {
        stats.connectFailures += 1;
        note(e);
        cli.close({ force: true }).catch(() => {});
        return;
    }
    stats.open.push(now() - t);
    const tb = now();
    try {
        const r = await cli.call('BootNotification', { chargePointVendor: 'loadgen', chargePointModel: 'ocpp-rpc' });
        if (r.status !== 'Accepted') throw new Error(`${id}: BootNotification ${r.status}`);
    } catch (e) {
        if (isTimeout(e)) stats.timeouts += 1; else stats.callErrors += 1;
        note(e);
        await cli.close({ force: true }).catch(() => {});
        return;
    }
    stats.boot.push(now() - tb);
    booted += 1;
    if (booted === args.count) allBootedAt = now();
    const period = 1000 / args.msgRate;
    let next = now() + Math.random() * period;
    let k = 0;
    while (!closed) {
        await sleep(next - now());
        if (now() >= endAt || closed) break;
        next += period;
        const sent = now();
        try {
            if (k++ % 2 === 0) {
                await cli.call('Heartbeat', {});
            } else {
                await cli.call('MeterValues', { connectorId: 1, meterValue: [{ timestamp: iso(), sampledValue: [
                    { value: String(1000 + k), measurand: 'Energy.Active.Import.Register', unit: 'Wh' }] }] });
            }
            const rt = now() - sent;
            stats.rt.push(rt);
            if (allBootedAt !== null && sent >= allBootedAt) stats.rtSteady.push(rt);
        } catch (e) {
            if (isTimeout(e)) stats.timeouts += 1; else stats.callErrors += 1;
            note(e);
        }
    }
    if (closed) stats.closedEarly += 1;
    await cli.close({ code: 1000 }).catch(() => {});
}

function summary(values) {
    if (!values.length) return { n: 0, p50: null, p99: null, max: null };
    const s = Float64Array.from(values).sort();
    const q = (p) => s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))];
    const r = (x) => Math.round(x * 10) / 10;
    return { n: s.length, p50: r(q(0.5)), p99: r(q(0.99)), max: r(s[s.length - 1]) };
}

async function main() {
    const t0 = now() + 100;
    const endAt = t0 + args.durationS * 1000;
    await Promise.all(Array.from({ length: args.count }, (_, i) => chargePoint(i, t0, endAt)));
    const result = {
        count: args.count, opened: stats.open.length, booted, connect_rate: args.connectRate, msg_rate: args.msgRate,
        duration_s: args.durationS, all_booted_s: allBootedAt === null ? null : Math.round(allBootedAt - t0) / 1000,
        open_ms: summary(stats.open), boot_ms: summary(stats.boot), rt_ms: summary(stats.rt),
        rt_steady_ms: summary(stats.rtSteady), timeouts: stats.timeouts, connect_failures: stats.connectFailures,
        call_errors: stats.callErrors, closed_early: stats.closedEarly, strict_failures: stats.strictFailures,
        server_calls: stats.serverCalls,
    };
    process.stdout.write(JSON.stringify(result) + '\n');
}

main().then(() => process.exit(0), (e) => { process.stderr.write(`loadgen failed: ${e.stack || e}\n`); process.exit(2); });
