import { hostname } from 'node:os';

/** Who is doing the work: host, pid and, under Slurm, the job / task / node ids. Goes into every attempt record. */
export interface WorkerIdentity {
  host: string;
  pid: number;
  slurm?: { jobId: string; procId?: string | undefined; nodeId?: string | undefined } | undefined;
  /** `host:pid` or `host:pid slurm:<job>.<proc>` */
  label: string;
}

export function workerIdentity(env: NodeJS.ProcessEnv = process.env): WorkerIdentity {
  const host = hostname();
  const pid = process.pid;
  const jobId = env.SLURM_JOB_ID;
  const slurm = jobId ? { jobId, procId: env.SLURM_PROCID, nodeId: env.SLURM_NODEID } : undefined;
  const label = `${host}:${pid}${slurm ? ` slurm:${slurm.jobId}.${slurm.procId ?? '0'}${slurm.nodeId !== undefined ? `@node${slurm.nodeId}` : ''}` : ''}`;
  return { host, pid, slurm, label };
}
