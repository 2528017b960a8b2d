/**
 * What the Add trigger form asks for each kind of trigger: the source settings of
 * stratolab/triggers/spec.py (`_source`), with their labels, examples and first values. Pure: no
 * requests, no DOM; the form builds its fields from these, and `triggerRequest` reads them back.
 */
import { TriggerKind } from './api';

/** One setting of a trigger's source (`source.KEY` in the request and in the service's errors). */
export interface ISourceField {
  key: string;
  label: string;
  placeholder?: string;
  /** The value the field starts with, for the function `fn`. */
  initial?: (fn: string) => string;
  /** The form refuses to send it empty. */
  required?: boolean;
  /** A line under the field. */
  hint?: string;
  /** A select of `[value, label]`. */
  choices?: ReadonlyArray<readonly [string, string]>;
  /** Checkboxes, all ticked at first; the request has the ticked ones as a list. */
  several?: ReadonlyArray<string>;
  /** Sent as a number. */
  numeric?: boolean;
}

export interface IKindSpec {
  kind: TriggerKind;
  /** In the kind select and the trigger's badge. */
  label: string;
  /** What happens, in one sentence, under the kind select. */
  note: string;
  fields: ReadonlyArray<ISourceField>;
}

const UPLOAD: IKindSpec = {
  kind: 'upload',
  label: 'Upload',
  note: 'Each file put into the folder (by the file browser’s upload, by HTTP PUT, or by a program) calls the function with its bytes.',
  fields: [
    {
      key: 'folder',
      label: 'Folder (in your home)',
      initial: fn => `inbox/${fn}`,
      required: true
    },
    {
      key: 'output',
      label: 'Results',
      initial: () => 'next',
      placeholder: 'next',
      hint: '“next”: beside each file (cat.png gives cat.result.png, or cat.result.json); a folder such as outbox/NAME; or “none”.'
    },
    { key: 'pattern', label: 'Files', initial: () => '*', placeholder: '*.png' }
  ]
};

const MQTT: IKindSpec = {
  kind: 'mqtt',
  label: 'MQTT',
  note: 'Each message on a matching topic calls the function (+ is one level, # the rest).',
  fields: [
    { key: 'filter', label: 'Topic filter', placeholder: 'sensors/+/temperature', required: true },
    {
      key: 'qos',
      label: 'QoS',
      choices: [
        ['1', '1: at least once'],
        ['0', '0: at most once']
      ],
      initial: () => '1',
      numeric: true
    }
  ]
};

const POSTGRES: IKindSpec = {
  kind: 'postgres',
  label: 'PostgreSQL table',
  note: 'Each inserted, updated or deleted row of the table calls the function with the row.',
  fields: [
    { key: 'table', label: 'Table', placeholder: 'public.readings', required: true },
    { key: 'operations', label: 'Operations', several: ['INSERT', 'UPDATE', 'DELETE'] }
  ]
};

const NATS: IKindSpec = {
  kind: 'nats',
  label: 'NATS subject',
  note: 'Each message on the JetStream subject calls the function (* is one token, > the rest).',
  fields: [{ key: 'subject', label: 'Subject', placeholder: 'sensors.*.temperature', required: true }]
};

const RABBITMQ: IKindSpec = {
  kind: 'rabbitmq',
  label: 'RabbitMQ queue',
  note: 'Each message of the queue calls the function; it is acknowledged once stored.',
  fields: [{ key: 'queue', label: 'Queue', placeholder: 'uploads', required: true }]
};

const REDIS: IKindSpec = {
  kind: 'redis',
  label: 'Redis stream',
  note: 'Each entry added to the stream calls the function.',
  fields: [{ key: 'stream', label: 'Stream', placeholder: 'readings', required: true }]
};

const CRON: IKindSpec = {
  kind: 'cron',
  label: 'Timer',
  note: 'The function is called at the times of a cron expression.',
  fields: [
    { key: 'expr', label: 'Cron (m h dom mon dow)', placeholder: '*/5 * * * *', required: true },
    { key: 'timezone', label: 'Time zone', placeholder: 'UTC' }
  ]
};

const CLOUDEVENTS: IKindSpec = {
  kind: 'cloudevents',
  label: 'CloudEvents',
  note: 'Producers POST CloudEvents 1.0 (binary, structured or batch mode) to the trigger’s ingress URL, with your token or the trigger’s key.',
  fields: []
};

/** Every kind, in the order the form offers them. */
export const KIND_SPECS: ReadonlyArray<IKindSpec> = [UPLOAD, MQTT, POSTGRES, NATS, RABBITMQ, REDIS, CRON, CLOUDEVENTS];

/** The spec of `kind` (the upload's for a kind this lab does not know). */
export function kindSpec(kind: string): IKindSpec {
  return KIND_SPECS.find(s => s.kind === kind) ?? UPLOAD;
}

/** How a kind reads in a badge; an unknown kind as the service named it. */
export function kindLabel(kind: string): string {
  return KIND_SPECS.find(s => s.kind === kind)?.label ?? kind;
}
