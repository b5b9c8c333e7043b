import { ANY_METHOD } from '../wire/messages.js';

/** What a node serves, as every route keeps it: service → its methods (`*`: any method). */
export type ServiceTable = ReadonlyMap<string, ReadonlySet<string>>;

/** A node's announced services as a table. */
export function serviceTable(services: Record<string, readonly string[]>): Map<string, Set<string>> {
  return new Map(Object.entries(services).map(([s, methods]) => [s, new Set(methods)]));
}

/** Whether `service.method` is served: the method is listed, or the service takes any method. */
export function servesMethod(table: ServiceTable, service: string, method: string): boolean {
  const methods = table.get(service);
  return methods !== undefined && (methods.has(method) || methods.has(ANY_METHOD));
}

/** The methods of `service`, sorted. */
export function methodsIn(table: ServiceTable, service: string): string[] {
  return [...(table.get(service) ?? [])].sort();
}
