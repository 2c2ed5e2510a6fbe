import { describe, expect, test } from '@jest/globals';
import { nestedMtu, PROFILES } from '../../src/keys/profiles.js';

describe('profiles', () => {
  test('four GCM layers on 1500 leave 1278, as measured in a real kernel', () => {
    expect(nestedMtu(PROFILES['aes-gcm'], 1500, 4)).toBe(1278);
  });
});
