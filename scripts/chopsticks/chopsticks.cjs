#!/usr/bin/env node
// Chopsticks for subtensor runtimes newer than chopsticks expects.
//
//   node chopsticks.cjs raw-spec PLAIN.json RAW.json
//     Builds a raw chain spec (what `chopsticks --genesis` reads) from a plain
//     one (`genesis.runtimeGenesis = {code, patch}`) with the runtime's own
//     genesis builder: `GenesisBuilder_get_preset(None)`, the patch merged over
//     it, `GenesisBuilder_build_state`, plus `:code`.
//   node chopsticks.cjs run CHOPSTICKS-ARGS...
//     Runs chopsticks' CLI (`--genesis RAW.json` required) with Aura's slot
//     duration answered by the runtime itself.
//
// Why `run`: chopsticks asks `AuraApi_slot_duration` with unresolved imports
// refused. Subtensor's 2025 runtimes import bls12-381 host calls (for drand
// pulse verification) that chopsticks' executor lacks, so the call fails and
// chopsticks falls back to 12 s slots while the runtime's Aura runs 1 s slots:
// every block then fails Aura's slot check. This asks with unresolved imports
// allowed (nothing unresolved is called to answer) and seeds chopsticks' memo
// before its CLI starts. Blocks that call those host functions (a
// `Drand.write_pulse` that verifies a signature) still fail: write pulses with
// `dev_setStorage` instead.
//
// Chopsticks 1.5.1 is found as node finds packages (NODE_PATH works):
// `npm install @acala-network/chopsticks@1.5.1`.
const path = require('path');
const fs = require('fs');

// The packages' `exports` maps hide the files needed here from require.resolve.
const find = (name, extra) => {
  const dirs = require.resolve.paths(name).concat(extra ? [extra] : []);
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
  }
  throw new Error(`cannot find ${name}: npm install @acala-network/chopsticks@1.5.1 and set NODE_PATH to its node_modules`);
};
const cliDir = () => find('@acala-network/chopsticks');
const executor = () => {
  const nested = path.join(cliDir(), 'node_modules', '@acala-network', 'chopsticks-core');
  const core = fs.existsSync(nested) ? nested : find('@acala-network/chopsticks-core');
  return require(path.join(core, 'dist', 'cjs', 'wasm-executor', 'index.js'));
};
const { compactToU8a, u8aConcat, u8aToHex, hexToU8a, stringToU8a, u8aToString } = require(
  path.join(find('@polkadot/util', path.join(cliDir(), 'node_modules')), 'cjs', 'index.js'),
);

const noStorage = {
  getStorage: async () => undefined,
  getNextKey: async () => undefined,
  offchainGetStorage: async () => undefined,
  offchainTimestamp: async () => Date.now(),
  offchainRandomSeed: async () => '0x' + '00'.repeat(32),
  offchainSubmitTransaction: async () => false,
};

const runtimeCall = async (ex, code, name, args) => {
  const r = await ex.runTask(
    { wasm: code, calls: [[name, args]], mockSignatureHost: false, allowUnresolvedImports: true, runtimeLogLevel: 0, storage: [], stateVersion: 1 },
    noStorage,
  );
  if ('Error' in r) throw new Error(`${name}: ${r.Error}`);
  return r.Call;
};

// A SCALE compact length prefix: [length, header bytes].
const compactLength = (bytes, at) => {
  const b = bytes[at];
  switch (b & 3) {
    case 0: return [b >> 2, 1];
    case 1: return [(b | (bytes[at + 1] << 8)) >> 2, 2];
    case 2: return [((b | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 2), 4];
    default: throw new Error('length over 2^30');
  }
};

const isObject = (v) => v && typeof v === 'object' && !Array.isArray(v);
const merge = (base, patch) => {
  for (const [k, v] of Object.entries(patch)) base[k] = isObject(v) && isObject(base[k]) ? merge(base[k], v) : v;
  return base;
};

const rawSpec = async (input, output) => {
  const ex = executor();
  const spec = JSON.parse(fs.readFileSync(input, 'utf8'));
  const genesis = spec.genesis && spec.genesis.runtimeGenesis;
  if (!genesis || !genesis.code) throw new Error(`${input}: not a plain spec (no genesis.runtimeGenesis.code)`);
  const preset = hexToU8a((await runtimeCall(ex, genesis.code, 'GenesisBuilder_get_preset', ['0x00'])).result);
  if (preset[0] !== 1) throw new Error('the runtime has no default genesis preset');
  const [len, header] = compactLength(preset, 1);
  const config = merge(JSON.parse(u8aToString(preset.subarray(1 + header, 1 + header + len))), genesis.patch || {});
  const json = stringToU8a(JSON.stringify(config));
  const built = await runtimeCall(ex, genesis.code, 'GenesisBuilder_build_state', [u8aToHex(u8aConcat(compactToU8a(json.length), json))]);
  const result = hexToU8a(built.result);
  if (result[0] !== 0) throw new Error(`GenesisBuilder_build_state refused the config: ${u8aToString(result.subarray(2))}`);
  const top = {};
  for (const [k, v] of built.storageDiff) if (v !== null && v !== undefined) top[k] = v;
  top['0x3a636f6465'] = genesis.code;
  delete spec.genesis.runtimeGenesis;
  spec.genesis.raw = { top, childrenDefault: {} };
  const tmp = `${output}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(spec));
  fs.renameSync(tmp, output);
  console.log(`${output}: ${Object.keys(top).length} storage keys`);
  await ex.destroyWorker();
};

const run = (args) => {
  const ex = executor();
  const at = args.indexOf('--genesis');
  if (at < 0) throw new Error('run needs --genesis RAW.json');
  const code = JSON.parse(fs.readFileSync(args[at + 1], 'utf8')).genesis.raw.top['0x3a636f6465'];
  const slot = runtimeCall(ex, code, 'AuraApi_slot_duration', []).then((r) =>
    Number(Buffer.from(r.result.slice(2), 'hex').readBigUInt64LE(0)),
  );
  ex.getAuraSlotDuration.cache.set(code, slot);
  process.argv = [process.argv[0], path.join(cliDir(), 'chopsticks.cjs'), ...args];
  require(path.join(cliDir(), 'dist', 'cjs', 'cli.js'));
};

const [command, ...rest] = process.argv.slice(2);
try {
  if (command === 'raw-spec' && rest.length === 2) {
    rawSpec(rest[0], rest[1]).catch((e) => { console.error(e.message || e); process.exit(1); });
  } else if (command === 'run') {
    run(rest);
  } else {
    console.error('usage: chopsticks.cjs raw-spec PLAIN.json RAW.json | chopsticks.cjs run CHOPSTICKS-ARGS...');
    process.exit(2);
  }
} catch (e) {
  console.error(e.message || e);
  process.exit(1);
}
