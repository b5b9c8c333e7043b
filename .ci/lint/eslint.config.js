// The project's lint rules: ESLint's and typescript-eslint's recommended sets, over every source,
// test, bench and script file. Run from the checkout's root: `npm run lint`.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: ['**/dist/**', '**/node_modules/**', 'coverage/**', 'bench/results/**', 'certs/out/**', '.ci/lint/node_modules/**'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    files: ['src/relay/dashboard/static/**/*.js'],
    languageOptions: { globals: { ...globals.browser } },
  },
);
