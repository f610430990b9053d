/**
 * Mount profiles: what each kind of file system changes in how the `file` driver uses it. Detecting the
 * kind lives in @lading/core (one copy: core refuses SQLite on NFS with the same logic).
 */
import { isBlockLocal, type MountKind } from '@lading/core';

export {
  MOUNT_KINDS,
  detectMount,
  detectMountKind,
  detectMountKindSync,
  isBlockLocal,
  findMount,
  mountKindFor,
  mountKindOf,
  mountOf,
  parseMountinfo,
  realpathOrAncestor,
  realpathOrAncestorSync,
  type MountEntry,
  type MountKind,
} from '@lading/core';

const MiB = 1024 * 1024;

/** What a mount kind changes in how lading uses it. */
export interface MountProfile {
  kind: MountKind;
  /** fcntl/flock locks are reliable (not on NFS: lockd is optional and often broken on appliances). */
  allowsLocks: boolean;
  /** SQLite (WAL needs shared memory and working locks) may live here. */
  canHostSqlite: boolean;
  /** Size of each read/write system call; large and aligned on parallel file systems (stripe / chunk multiples). */
  ioChunkBytes: number;
  /** Ranged reads larger than this are split into aligned chunks read in parallel. 0: never. */
  parallelReadThreshold: number;
  parallelReads: number;
  /**
   * Look objects up (stat) with a synchronous system call, not through libuv's thread pool: on a local disk
   * or tmpfs it takes a few µs, where the thread-pool round trip costs ≈ 40 µs of CPU over two threads (the
   * runner stats one commit marker per shard). Only on the local profile of a block-local file system: a
   * server-backed one (NFS, Lustre, GPFS, FUSE...) could block the event loop for a round trip.
   */
  syncStat: boolean;
}

/** The profile of a mount kind; `fsType` (from mountinfo) is the file system actually under the path. */
export function mountProfile(kind: MountKind, fsType?: string): MountProfile {
  switch (kind) {
    case 'nfs':
      return { kind, allowsLocks: false, canHostSqlite: false, ioChunkBytes: 1 * MiB, parallelReadThreshold: 0, parallelReads: 1, syncStat: false };
    case 'lustre':
    case 'daos':
      // Lustre stripes and DAOS chunks default to 1 MiB: 4 MiB aligned requests cover several OSTs / targets at once.
      return { kind, allowsLocks: true, canHostSqlite: true, ioChunkBytes: 4 * MiB, parallelReadThreshold: 32 * MiB, parallelReads: 4, syncStat: false };
    case 'local':
      return { kind, allowsLocks: true, canHostSqlite: true, ioChunkBytes: 1 * MiB, parallelReadThreshold: 0, parallelReads: 1, syncStat: isBlockLocal(fsType) };
  }
}

