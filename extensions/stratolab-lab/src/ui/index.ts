/**
 * The UI kit of the extension: every view builds its DOM, fields, buttons and dialogs from here.
 */
export * from './buttons';
export * from './dialogs';
export * from './dom';
export * from './fields';
export * from './poll';
export * from './model';
export * from './parse';
export * from './summary';
export * from './views';
