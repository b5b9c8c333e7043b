// The few functions of semver (a dependency of our dependencies, without types) that test/engines.test.ts uses.
declare module 'semver' {
  interface SemVer {
    readonly version: string;
    readonly major: number;
    readonly minor: number;
    readonly patch: number;
  }
  interface Options {
    includePrerelease?: boolean;
  }
  const semver: {
    minVersion(range: string): SemVer | null;
    validRange(range: string): string | null;
    satisfies(version: string | SemVer, range: string, options?: Options): boolean;
  };
  export default semver;
}
