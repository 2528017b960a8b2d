/**
 * jest for the extension's pure modules (sorting and filtering of the tables, formats, parsers):
 * TypeScript through ts-jest, compiled to CommonJS for node; tests are `src/**\/__tests__/*.spec.ts`
 * (left out of the extension's build by tsconfig.json).
 */
module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/src/**/__tests__/**/*.spec.ts'],
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: { module: 'commonjs', esModuleInterop: true, strict: true } }]
  }
};
