/**
 * Tor's ntor v3 handshake (proposal 332, tor-spec "ntor-v3"), on Node's own crypto: X25519,
 * SHA3-256, SHAKE-256 and AES-256-CTR. The distributed-trust mode (issue 14) uses it for the
 * one-round-trip, forward-secret, mix-authenticated setup of each telescope hop: the client
 * knows the mix's identity ID and onion key B from the directory, sends its ephemeral X and an
 * encrypted, MACed message; the mix answers with its ephemeral Y, an authenticator and an
 * encrypted reply; both derive the same key stream from X*y, X*b (only the holder of b can
 * answer) and the verification string.
 *
 * Pure: every secret comes from the caller (the edge passes `keyPairFromSecret` of 32 bytes
 * from the CSPRNG); no I/O, no clock. Checked against Tor's own test
 * vectors (test/unit/ntor3.test.ts, from tor's src/test/test_ntor_v3.c).
 */
import { createCipheriv, createHash, createPrivateKey, createPublicKey, diffieHellman, timingSafeEqual, type KeyObject } from 'node:crypto';

export const PROTOID = Buffer.from('ntor3-curve25519-sha3_256-1');
const T_KDF_PHASE1 = Buffer.concat([PROTOID, Buffer.from(':kdf_phase1')]);
const T_MAC_PHASE1 = Buffer.concat([PROTOID, Buffer.from(':msg_mac')]);
const T_KDF_FINAL = Buffer.concat([PROTOID, Buffer.from(':kdf_final')]);
const T_KEY_SEED = Buffer.concat([PROTOID, Buffer.from(':key_seed')]);
const T_VERIFY = Buffer.concat([PROTOID, Buffer.from(':verify')]);
const T_AUTH = Buffer.concat([PROTOID, Buffer.from(':auth_final')]);
const SERVER = Buffer.from('Server');

export const ID_LEN = 32;
export const KEY_LEN = 32;
const ENC_KEY_LEN = 32;
const MAC_KEY_LEN = 32;
const DIGEST_LEN = 32;
/** the largest message either side may carry (a setup message fits a UDP packet) */
export const MAX_MESSAGE = 4096;

/** A handshake that must be refused: wrong identity or onion key, bad MAC or authenticator. */
export class Ntor3Reject extends Error {
  constructor(why: string) {
    super(`ntor v3 handshake rejected: ${why}`);
    this.name = 'Ntor3Reject';
  }
}

export interface X25519KeyPair {
  secret: Buffer;
  public: Buffer;
}

const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

const privateKey = (secret: Buffer): KeyObject => {
  if (secret.length !== KEY_LEN) throw new Error('an X25519 secret key is 32 bytes');
  return createPrivateKey({ key: Buffer.concat([PKCS8_X25519, secret]), format: 'der', type: 'pkcs8' });
};
const publicKey = (pub: Buffer): KeyObject => {
  if (pub.length !== KEY_LEN) throw new Error('an X25519 public key is 32 bytes');
  return createPublicKey({ key: Buffer.concat([SPKI_X25519, pub]), format: 'der', type: 'spki' });
};

/** The key pair of a 32-byte secret (clamped by X25519 itself). */
export function keyPairFromSecret(secret: Buffer): X25519KeyPair {
  const der = createPublicKey(privateKey(secret)).export({ format: 'der', type: 'spki' });
  return { secret: Buffer.from(secret), public: Buffer.from(der.subarray(der.length - KEY_LEN)) };
}

/** X25519, refusing the all-zero result of a low-order point (no contribution from the peer). */
function dh(secret: Buffer, pub: Buffer): Buffer {
  let s: Buffer;
  try {
    s = diffieHellman({ privateKey: privateKey(secret), publicKey: publicKey(pub) });
  } catch {
    // OpenSSL 3 refuses the derivation itself when the result is all zero
    throw new Ntor3Reject('a public key of low order');
  }
  if (s.every((b) => b === 0)) throw new Ntor3Reject('a public key of low order');
  return s;
}

/** ENCAP(s): the length in bytes as 8 big-endian bytes (64 bits), then s */
function encap(s: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeBigUInt64BE(BigInt(s.length));
  return Buffer.concat([h, s]);
}
const h = (s: Buffer, tweak: Buffer) => createHash('sha3-256').update(encap(tweak)).update(s).digest();
const mac = (s: Buffer, key: Buffer, tweak: Buffer) => createHash('sha3-256').update(encap(tweak)).update(encap(key)).update(s).digest();
const kdf = (s: Buffer, tweak: Buffer, n: number) => createHash('shake256', { outputLength: n }).update(encap(tweak)).update(s).digest();
/** AES-256-CTR from a zero counter: each key encrypts one message only */
const enc = (s: Buffer, k: Buffer) => {
  const c = createCipheriv('aes-256-ctr', k, Buffer.alloc(16));
  return Buffer.concat([c.update(s), c.final()]);
};
const same = (a: Buffer, b: Buffer) => a.length === b.length && timingSafeEqual(a, b);

function phase1Keys(bx: Buffer, id: Buffer, X: Buffer, B: Buffer, verification: Buffer) {
  const k = kdf(Buffer.concat([bx, id, X, B, PROTOID, encap(verification)]), T_KDF_PHASE1, ENC_KEY_LEN + MAC_KEY_LEN);
  return { encKey: k.subarray(0, ENC_KEY_LEN), macKey: k.subarray(ENC_KEY_LEN) };
}

function finalSecrets(first: Buffer, second: Buffer, id: Buffer, B: Buffer, X: Buffer, Y: Buffer, verification: Buffer) {
  const secretInput = Buffer.concat([first, second, id, B, X, Y, PROTOID, encap(verification)]);
  return { keySeed: h(secretInput, T_KEY_SEED), verify: h(secretInput, T_VERIFY) };
}

const authOf = (verify: Buffer, id: Buffer, B: Buffer, Y: Buffer, X: Buffer, clientMac: Buffer, encrypted: Buffer) =>
  h(Buffer.concat([verify, id, B, Y, X, clientMac, encap(encrypted), PROTOID, SERVER]), T_AUTH);

function checkLen(what: string, b: Buffer, n: number): void {
  if (b.length !== n) throw new Error(`ntor v3: ${what} must be ${n} bytes, not ${b.length}`);
}

export interface ClientState {
  x: Buffer;
  X: Buffer;
  B: Buffer;
  id: Buffer;
  bx: Buffer;
  mac: Buffer;
  verification: Buffer;
}

/**
 * The client's first message to the relay with identity `id` and onion key `B`: ID | B | X |
 * ENC(message) | MAC. `x` is the client's ephemeral key pair, drawn for this handshake only.
 */
export function clientHandshake(o: { id: Buffer; B: Buffer; x: X25519KeyPair; verification: Buffer; message: Buffer }): { handshake: Buffer; state: ClientState } {
  checkLen('the relay identity', o.id, ID_LEN);
  checkLen('the onion key', o.B, KEY_LEN);
  if (o.message.length > MAX_MESSAGE) throw new Error(`ntor v3: a message of at most ${MAX_MESSAGE} bytes`);
  const bx = dh(o.x.secret, o.B);
  const { encKey, macKey } = phase1Keys(bx, o.id, o.x.public, o.B, o.verification);
  const msg0 = Buffer.concat([o.id, o.B, o.x.public, enc(o.message, encKey)]);
  const m = mac(msg0, macKey, T_MAC_PHASE1);
  return { handshake: Buffer.concat([msg0, m]), state: { x: o.x.secret, X: o.x.public, B: o.B, id: o.id, bx, mac: m, verification: o.verification } };
}

export interface ServerState {
  X: Buffer;
  B: Buffer;
  xb: Buffer;
  id: Buffer;
  clientMac: Buffer;
  verification: Buffer;
}

/**
 * The relay's first half: checks that the message is for its identity and one of its onion
 * keys (`onionKeys`, by public key), checks the MAC, and returns the client's message.
 */
export function serverReceive(o: { handshake: Buffer; id: Buffer; onionKeys: readonly X25519KeyPair[]; verification: Buffer }): { message: Buffer; state: ServerState } {
  const c = o.handshake;
  if (c.length < ID_LEN + 2 * KEY_LEN + DIGEST_LEN) throw new Ntor3Reject('too short');
  if (c.length > ID_LEN + 2 * KEY_LEN + MAX_MESSAGE + DIGEST_LEN) throw new Ntor3Reject('too long');
  const id = c.subarray(0, ID_LEN);
  const B = c.subarray(ID_LEN, ID_LEN + KEY_LEN);
  const X = c.subarray(ID_LEN + KEY_LEN, ID_LEN + 2 * KEY_LEN);
  const encrypted = c.subarray(ID_LEN + 2 * KEY_LEN, c.length - DIGEST_LEN);
  const got = c.subarray(c.length - DIGEST_LEN);
  if (!same(id, o.id)) throw new Ntor3Reject('not for this identity');
  const key = o.onionKeys.find((k) => same(k.public, B));
  if (!key) throw new Ntor3Reject('not for an onion key of this relay');
  const xb = dh(key.secret, X);
  const { encKey, macKey } = phase1Keys(xb, o.id, X, B, o.verification);
  const want = mac(c.subarray(0, c.length - DIGEST_LEN), macKey, T_MAC_PHASE1);
  if (!same(want, got)) throw new Ntor3Reject('bad MAC');
  return {
    message: enc(encrypted, encKey),
    state: { X: Buffer.from(X), B: Buffer.from(B), xb, id: Buffer.from(id), clientMac: Buffer.from(want), verification: o.verification },
  };
}

/**
 * The relay's reply, Y | AUTH | ENC(message), and `keyBytes` of key material (after the 32 bytes
 * that encrypted the reply). `y` is the relay's ephemeral key pair for this handshake only.
 */
export function serverReply(s: ServerState, o: { y: X25519KeyPair; message: Buffer; keyBytes: number }): { reply: Buffer; keys: Buffer } {
  if (o.message.length > MAX_MESSAGE) throw new Error(`ntor v3: a message of at most ${MAX_MESSAGE} bytes`);
  const xy = dh(o.y.secret, s.X);
  const { keySeed, verify } = finalSecrets(xy, s.xb, s.id, s.B, s.X, o.y.public, s.verification);
  const stream = kdf(keySeed, T_KDF_FINAL, ENC_KEY_LEN + o.keyBytes);
  const encrypted = enc(o.message, stream.subarray(0, ENC_KEY_LEN));
  const auth = authOf(verify, s.id, s.B, o.y.public, s.X, s.clientMac, encrypted);
  return { reply: Buffer.concat([o.y.public, auth, encrypted]), keys: Buffer.from(stream.subarray(ENC_KEY_LEN)) };
}

/** The client's second half: checks the relay's authenticator, returns its message and the keys. */
export function clientFinish(s: ClientState, reply: Buffer, keyBytes: number): { message: Buffer; keys: Buffer } {
  if (reply.length < KEY_LEN + DIGEST_LEN) throw new Ntor3Reject('reply too short');
  if (reply.length > KEY_LEN + DIGEST_LEN + MAX_MESSAGE) throw new Ntor3Reject('reply too long');
  const Y = reply.subarray(0, KEY_LEN);
  const got = reply.subarray(KEY_LEN, KEY_LEN + DIGEST_LEN);
  const encrypted = reply.subarray(KEY_LEN + DIGEST_LEN);
  const yx = dh(s.x, Y);
  const { keySeed, verify } = finalSecrets(yx, s.bx, s.id, s.B, s.X, Y, s.verification);
  if (!same(authOf(verify, s.id, s.B, Y, s.X, s.mac, encrypted), got)) throw new Ntor3Reject('bad authenticator (not the relay whose onion key was used)');
  const stream = kdf(keySeed, T_KDF_FINAL, ENC_KEY_LEN + keyBytes);
  return { message: enc(encrypted, stream.subarray(0, ENC_KEY_LEN)), keys: Buffer.from(stream.subarray(ENC_KEY_LEN)) };
}
