"""Batch jobs over folders, manifests, file lists and videos: resumable, exactly-once, local or on Ray.

    from workzone.batch import BatchOptions, run_batch_job
    summary = run_batch_job(["shots/"], [Path("results.parquet")], options=BatchOptions(fps=2))
"""

from workzone.batch.job import BatchOptions, BatchSummary, run_batch_job
from workzone.batch.store import read_results

__all__ = ["BatchOptions", "BatchSummary", "read_results", "run_batch_job"]
