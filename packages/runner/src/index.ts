export * from './spec.js';
export * from './inputs.js';
export * from './planner.js';
export * from './task.js';
export * from './context.js';
export { startWorker, RunnerWorker, DEFAULT_TASK_TOPIC, WORKER_GROUP, type WorkerOptions, type ShardEvent } from './worker.js';
export { submit, Job, type JobRecord, type JobStatus, type SubmitOptions } from './job.js';
