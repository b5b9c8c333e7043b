import type { RelayEvents } from '../events.js';
import type { DoorEvents, Who } from './hub.js';

/** The metrics of refused connections and slow consumers (metrics.ts). */
export interface DoorMetrics {
  connectionRejected(reason: string): void;
  slowConsumer(transport: 'websocket' | 'msgpack-rpc' | 'http'): void;
}

/** The one place where a door's refusals and cuts become a metric and an audit record. */
export function doorEvents(metrics: DoorMetrics, events: Pick<RelayEvents, 'audit'>): DoorEvents {
  return {
    refused(metric, who, reason) {
      if (metric !== undefined) metrics.connectionRejected(metric);
      if (who !== undefined && reason !== undefined) events.audit({ kind: 'refused-connection', ...who, reason });
    },
    slowConsumer(who, reason) {
      metrics.slowConsumer(who.door === 'msgpack-rpc' ? 'msgpack-rpc' : who.door === 'websocket' ? 'websocket' : 'http');
      events.audit({ kind: 'slow-consumer', ...who, reason });
    },
  };
}

export type { Who };
