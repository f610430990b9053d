// Co-partitioned assignment: partition i of a topic and partition i of its retry topic go to the same
// member, so the member that owns a key's partition also sees the key's pending retries (per-key order is
// kept across retries). Main partitions are spread round-robin over the members sorted by id.
import { AssignerProtocol, type PartitionAssigner } from 'kafkajs';

export const LADING_ASSIGNER = 'LadingCoPartitioned';

export function coPartitionedAssigner(mainTopic: string, retryTopic: string): PartitionAssigner {
  return ({ cluster }) => ({
    name: LADING_ASSIGNER,
    version: 0,
    async assign({ members, topics }) {
      const ids = members.map((m) => m.memberId).sort();
      const count = (t: string) => (topics.includes(t) ? cluster.findTopicPartitionMetadata(t).map((m) => m.partitionId).sort((a, b) => a - b) : []);
      const main = count(mainTopic);
      const retry = count(retryTopic);
      const plan = new Map<string, Record<string, number[]>>(ids.map((id) => [id, {}]));
      const give = (member: string, topic: string, p: number) => {
        const a = plan.get(member)!;
        (a[topic] ??= []).push(p);
      };
      const ownerOfMain = new Map<number, string>();
      main.forEach((p, i) => {
        const m = ids[i % ids.length]!;
        ownerOfMain.set(p, m);
        give(m, mainTopic, p);
      });
      retry.forEach((p, i) => give(ownerOfMain.get(p) ?? ids[i % ids.length]!, retryTopic, p));
      // Any other subscribed topic (none today): round-robin.
      for (const t of topics) {
        if (t === mainTopic || t === retryTopic) continue;
        count(t).forEach((p, i) => give(ids[i % ids.length]!, t, p));
      }
      return ids.map((memberId) => ({
        memberId,
        memberAssignment: AssignerProtocol.MemberAssignment.encode({ version: 0, assignment: plan.get(memberId)!, userData: Buffer.alloc(0) }),
      }));
    },
    protocol({ topics }) {
      return { name: LADING_ASSIGNER, metadata: AssignerProtocol.MemberMetadata.encode({ version: 0, topics, userData: Buffer.alloc(0) }) };
    },
  });
}
