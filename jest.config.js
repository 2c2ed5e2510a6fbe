// Tests are compiled by tsc (which type-checks them) and jest runs the emitted ESM.
export default {
  testEnvironment: 'node',
  roots: ['<rootDir>/dist/test'],
  testMatch: ['**/*.test.js'],
  transform: {},
  testTimeout: 30000,
};
