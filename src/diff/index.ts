/** Desired NodeConfig vs observed router -> ordered Change[] and its human / JSON views. */
export * from './diff.js';
export * from './kinds.js';
export * from './order.js';
export * from './summary.js';
