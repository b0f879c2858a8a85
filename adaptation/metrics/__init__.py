"""Evaluation metrics (pure Python / numpy; no TensorFlow).

- `adaptation.metrics.glue`: GLUE metrics (CoLA MCC, accuracy, F1, Pearson/Spearman, GLUE average).
- `adaptation.metrics.retrieval`: reranking metrics; `ranking(qrels, run, k=10, min_relevance=1)`
  -> `{"mrr@10", "ndcg@10"}` is re-exported here as `adaptation.metrics.ranking`.
- `adaptation.metrics.superglue`: SuperGLUE metrics.
"""

from adaptation.metrics.glue import glue_average, glue_metrics, matthews_corrcoef, mnli_metrics, task_score
from adaptation.metrics.retrieval import ranking

__all__ = ["glue_average", "glue_metrics", "matthews_corrcoef", "mnli_metrics", "ranking", "task_score"]
