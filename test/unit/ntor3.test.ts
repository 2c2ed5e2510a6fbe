/**
 * src/trust/ntor3.ts against Tor's own ntor v3 test vectors (tor's src/test/test_ntor_v3.c,
 * "from the python implementation, confirmed with the rust implementation"), and the refusals a
 * handshake must make: another identity or onion key, a changed byte anywhere, a reply from a
 * relay without the onion key's secret, a low-order public key.
 */
import { describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { clientFinish, clientHandshake, keyPairFromSecret, Ntor3Reject, serverReceive, serverReply, type X25519KeyPair } from '../../src/trust/ntor3.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// tor src/test/test_ntor_v3.c, test_ntor3_testvecs
const V = {
  b: hex('4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a'),
  B: hex('f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d'),
  id: hex('9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2'),
  x: hex('b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49'),
  X: hex('252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f46'),
  y: hex('4865a5b7689dafd978f529291c7171bc159be076b92186405d13220b80e2a053'),
  Y: hex('4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d'),
  clientMessage: hex('68656c6c6f20776f726c64'), // "hello world"
  verification: hex('78797a7a79'), // "xyzzy"
  serverMessage: hex('486f6c61204d756e646f'), // "Hola Mundo"
  clientHandshake: hex(`9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2f8307a2bc1870b00b828bb74dbb8fd88e632a6375
    ab3bcd1ae706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f463bebd9151fd3b47c180abc9e044d53565f04d82bbb3bebed3d06cea
    65db8be9c72b68cd461942088502f67`),
  serverHandshake: hex(`4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d2fc5f8773ca824542bc6cf6f57c7c29bbf4e5476461
    ab130c5b18ab0a91276651202c3e1e87c0d32054c`),
  keys: hex(`9c19b631fd94ed86a817e01f6c80b0743a43f5faebd39cfaa8b00fa8bcc65c3bfeaa403d91acbd68a821bf6ee8504602b094a254392a07737d5662768
    c7a9fb1b2814bb34780eaee6e867c773e28c212ead563e98a1cd5d5b4576f5ee61c59bde025ff2851bb19b721421694f263818e3531e43a9e4e3e2c661e2ad547d8984
    caa28ebecd3e4525452299be26b9185a20a90ce1eac20a91f2832d731b54502b09749b5a2a2949292f8cfcbeffb790c7790ed935a9d251e7e336148ea83b063a5618fc
    ff674a44581585fd22077ca0e52c59a24347a38d1a1ceebddbf238541f226b8f88d0fb9c07a1bcd2ea764bbbb5dacdaf5312a14c0b9e4f06309b0333b4a`),
};

describe("ntor v3 against Tor's test vectors", () => {
  test('the key pairs are the ones in the vectors', () => {
    expect(keyPairFromSecret(V.b).public).toEqual(V.B);
    expect(keyPairFromSecret(V.x).public).toEqual(V.X);
    expect(keyPairFromSecret(V.y).public).toEqual(V.Y);
  });

  test('client handshake, relay handshake, client finish: every byte as Tor computes it', () => {
    expect(V.keys).toHaveLength(256);
    const c = clientHandshake({ id: V.id, B: V.B, x: keyPairFromSecret(V.x), verification: V.verification, message: V.clientMessage });
    expect(c.handshake.toString('hex')).toBe(V.clientHandshake.toString('hex'));

    const s = serverReceive({ handshake: c.handshake, id: V.id, onionKeys: [keyPairFromSecret(V.b)], verification: V.verification });
    expect(s.message).toEqual(V.clientMessage);
    const r = serverReply(s.state, { y: keyPairFromSecret(V.y), message: V.serverMessage, keyBytes: 256 });
    expect(r.reply.toString('hex')).toBe(V.serverHandshake.toString('hex'));
    expect(r.keys.toString('hex')).toBe(V.keys.toString('hex'));

    const f = clientFinish(c.state, r.reply, 256);
    expect(f.message).toEqual(V.serverMessage);
    expect(f.keys).toEqual(V.keys);
  });
});

describe('ntor v3 refusals', () => {
  const relay = keyPairFromSecret(randomBytes(32));
  const id = randomBytes(32);
  const verification = Buffer.from('onionctl test');
  const fresh = (): X25519KeyPair => keyPairFromSecret(randomBytes(32));
  const start = () => clientHandshake({ id, B: relay.public, x: fresh(), verification, message: Buffer.from('setup hop 2') });

  test('a round trip with fresh keys agrees on the keys, and two handshakes never do', () => {
    const one = start();
    const s = serverReceive({ handshake: one.handshake, id, onionKeys: [fresh(), relay], verification });
    const r = serverReply(s.state, { y: fresh(), message: Buffer.from('ok'), keyBytes: 72 });
    const f = clientFinish(one.state, r.reply, 72);
    expect(f.keys).toEqual(r.keys);
    expect(f.message.toString()).toBe('ok');
    const two = start();
    const r2 = serverReply(serverReceive({ handshake: two.handshake, id, onionKeys: [relay], verification }).state, { y: fresh(), message: Buffer.alloc(0), keyBytes: 72 });
    expect(r2.keys.equals(r.keys)).toBe(false);
  });

  test('the relay refuses another identity, another onion key, another verification string, and any changed byte', () => {
    const c = start();
    expect(() => serverReceive({ handshake: c.handshake, id: randomBytes(32), onionKeys: [relay], verification })).toThrow(/not for this identity/);
    expect(() => serverReceive({ handshake: c.handshake, id, onionKeys: [fresh()], verification })).toThrow(/not for an onion key/);
    expect(() => serverReceive({ handshake: c.handshake, id, onionKeys: [relay], verification: Buffer.from('other') })).toThrow(/bad MAC/);
    for (const at of [64, 80, 96, c.handshake.length - 20, c.handshake.length - 1]) {
      const bad = Buffer.from(c.handshake);
      bad[at]! ^= 1;
      expect(() => serverReceive({ handshake: bad, id, onionKeys: [relay], verification })).toThrow(Ntor3Reject);
    }
    expect(() => serverReceive({ handshake: c.handshake.subarray(0, 100), id, onionKeys: [relay], verification })).toThrow(/too short/);
  });

  test('the client refuses a reply from a relay that lacks the onion key, and any changed byte of a reply', () => {
    const c = start();
    const s = serverReceive({ handshake: c.handshake, id, onionKeys: [relay], verification });
    const r = serverReply(s.state, { y: fresh(), message: Buffer.from('ok'), keyBytes: 32 });
    for (const at of [0, 40, r.reply.length - 1]) {
      const bad = Buffer.from(r.reply);
      bad[at]! ^= 1;
      expect(() => clientFinish(c.state, bad, 32)).toThrow(Ntor3Reject);
    }
    // an impostor that saw the client's handshake but holds another onion key: X*b is not its to compute
    const impostor = { ...s.state, xb: Buffer.alloc(32, 7) };
    const fake = serverReply(impostor, { y: fresh(), message: Buffer.from('ok'), keyBytes: 32 });
    expect(() => clientFinish(c.state, fake.reply, 32)).toThrow(/bad authenticator/);
  });

  test('a low-order public key (all-zero shared secret) is refused', () => {
    const c = start();
    const zeroX = Buffer.from(c.handshake);
    zeroX.fill(0, 64, 96); // X = 0, a point of small order
    expect(() => serverReceive({ handshake: zeroX, id, onionKeys: [relay], verification })).toThrow(/low order/);
  });
});
