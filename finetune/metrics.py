"""GLUE's metrics, computed with numpy and scipy (scikit-learn is only the tests' independent check).

CoLA: Matthews correlation. STS-B: Pearson and Spearman correlation of a regression output. MRPC, QQP: F1 of
the positive class (1: equivalent / duplicate) and accuracy. MNLI: accuracy on the matched and mismatched
dev sets. The others: accuracy. `main` is the task's GLUE score (the mean where GLUE averages two), which
picks the best checkpoint.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .tasks import Task


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1; 0 when there is no true positive (as scikit-learn's `zero_division=0`)."""
    true_positive = np.sum((predictions == 1) & (labels == 1))
    predicted, actual = np.sum(predictions == 1), np.sum(labels == 1)
    if true_positive == 0:
        return 0.0
    return float(2 * true_positive / (predicted + actual))


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The multiclass MCC (Gorodkin's R_K, what scikit-learn computes); 0 when either side is constant."""
    classes = np.union1d(predictions, labels)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (np.searchsorted(classes, labels), np.searchsorted(classes, predictions)), 1)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, samples = np.trace(confusion), confusion.sum()
    covariance = correct * samples - predicted_counts @ true_counts
    variance = (samples**2 - predicted_counts @ predicted_counts) * (samples**2 - true_counts @ true_counts)
    return float(covariance / np.sqrt(variance)) if variance > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64) - np.mean(x), np.asarray(y, np.float64) - np.mean(y)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator > 0 else 0.0


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation of the ranks (ties get their mean rank)."""
    return pearson(rankdata(x), rankdata(y))


def split_metrics(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics of one dev set, from the model's raw outputs (logits, or scores for STS-B)."""
    if task.is_regression:
        scores = outputs.reshape(-1).astype(np.float64)
        return {"pearson": pearson(scores, labels), "spearman": spearman(scores, labels)}
    predictions = outputs.argmax(axis=-1)
    values = {"accuracy": accuracy(predictions, labels)}
    if "f1" in task.metric_names:
        values["f1"] = f1_binary(predictions, labels)
    if "mcc" in task.metric_names:
        values = {"mcc": matthews_correlation(predictions, labels)}
    return values


def main_metric(task: Task, values: dict[str, float]) -> float:
    if task.main_metric == "f1_accuracy_mean":
        return (values["f1"] + values["accuracy"]) / 2
    if task.main_metric == "pearson_spearman_mean":
        return (values["pearson"] + values["spearman"]) / 2
    return values[task.main_metric]
