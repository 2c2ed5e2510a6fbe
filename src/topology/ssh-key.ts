/**
 * The form of a pinned SSH host key, "TYPE BASE64 [comment]" as in known_hosts without the host
 * field. Pure: the topology checks it at validate time (with file:line:col), and the SSH
 * transport parses the same text (src/remote/known-hosts.ts parsePinnedKey).
 */

/** Host key types onionctl accepts (signatures are negotiated separately: no ssh-rsa SHA-1). */
export const HOST_KEY_TYPES = ['ssh-ed25519', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', 'ssh-rsa'] as const;

/** undefined when `text` is an OpenSSH public key of an accepted type, else what is wrong. */
export function checkPublicKeyLine(text: string): string | undefined {
  const parts = text.trim().split(/\s+/);
  if (parts.length < 2) return 'a host key is "TYPE BASE64", e.g. "ssh-ed25519 AAAAC3Nza..." (as in known_hosts, without the host name)';
  const [type, b64] = parts as [string, string];
  if (!(HOST_KEY_TYPES as readonly string[]).includes(type)) return `host key type ${JSON.stringify(type.slice(0, 40))} is not one of ${HOST_KEY_TYPES.join(', ')}`;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) return 'the host key is not base64';
  const blob = Buffer.from(b64, 'base64');
  // the blob starts with its own type as an SSH string: uint32 length, then the name
  if (blob.length < 4) return 'the host key is too short to be a key';
  const n = blob.readUInt32BE(0);
  if (n > blob.length - 4 || blob.subarray(4, 4 + n).toString('latin1') !== type) return `the host key's data is not a ${type} key`;
  if (type === 'ssh-ed25519' && blob.length !== 4 + n + 4 + 32) return 'the ssh-ed25519 key has the wrong length';
  return undefined;
}
