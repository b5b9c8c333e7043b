/** The HTTP door moved to doors/http.ts; this path stays for its importers. */
export * from './doors/http.js';
