/**
 * Mount profiles: what each kind of file system changes in how the `file` driver uses it. Detecting the
 * kind lives in @lading/core (one copy: core refuses SQLite on NFS with the same logic).
 */
import type { MountKind } from '@lading/core';

export {
  MOUNT_KINDS,
  detectMountKind,
  detectMountKindSync,
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
}

export function mountProfile(kind: MountKind): MountProfile {
  switch (kind) {
    case 'nfs':
      return { kind, allowsLocks: false, canHostSqlite: false, ioChunkBytes: 1 * MiB, parallelReadThreshold: 0, parallelReads: 1 };
    case 'lustre':
    case 'daos':
      // Lustre stripes and DAOS chunks default to 1 MiB: 4 MiB aligned requests cover several OSTs / targets at once.
      return { kind, allowsLocks: true, canHostSqlite: true, ioChunkBytes: 4 * MiB, parallelReadThreshold: 32 * MiB, parallelReads: 4 };
    case 'local':
      return { kind, allowsLocks: true, canHostSqlite: true, ioChunkBytes: 1 * MiB, parallelReadThreshold: 0, parallelReads: 1 };
  }
}

