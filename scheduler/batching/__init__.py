"""The dynamic batcher: per-model queues that merge many callers' requests into one backend call.

policy.py   BatchingPolicy / QueuePolicy, policy_from_triton_config
queue.py    BatchQueue: pure (``now`` passed in) priority + EDF queue and batch triggers
item.py     QueueItem, Batch, Step, Moment: what the queue holds, hands out and judges by
groups.py   GroupIndex: items grouped by key, and the first due group, in O(log n)
sorted_run.py  SortedRun: the sorted chunks each group keeps its items in
fair_share.py  FairShare: start-time fair queueing tags, tenants' turns at one level
merge.py    merge_inputs / split_outputs / shape_key: tensors in and out of a batch
batcher.py  Batcher: the asyncio driver (submit, background loop, failure isolation)
together.py SubmitsTogether: Batcher.submit_group, requests that arrived together run at once
info.py     BatchInfo (what run_batch is told), RunBatch, BatcherCounters
admission.py  AdmissionPolicy, admit_by_deadline: refuse what the queue would make late
"""

from scheduler.batching.admission import AdmissionPolicy
from scheduler.batching.batcher import Batcher
from scheduler.batching.info import BatcherCounters, BatchInfo, BatchTrigger, RunBatch
from scheduler.batching.merge import merge_inputs, shape_key, split_outputs
from scheduler.batching.policy import (
    BatchingPolicy,
    BatchLayer,
    QueuePolicy,
    policy_from_triton_config,
)
from scheduler.batching.queue import Batch, BatchQueue, QueueItem, Trigger

__all__ = [
    "AdmissionPolicy",
    "Batch",
    "BatchInfo",
    "BatchLayer",
    "BatchQueue",
    "BatchTrigger",
    "Batcher",
    "BatcherCounters",
    "BatchingPolicy",
    "QueueItem",
    "QueuePolicy",
    "RunBatch",
    "Trigger",
    "merge_inputs",
    "policy_from_triton_config",
    "shape_key",
    "split_outputs",
]
