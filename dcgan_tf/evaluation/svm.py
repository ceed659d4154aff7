"""The paper's linear classifier on frozen features: a regularised L2-SVM (squared hinge loss, L2 penalty).

One-vs-rest: for each class k, minimise 0.5 |w_k|^2 + C sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2 with
y_ik = +1 for class k and -1 otherwise (the objective of scikit-learn's LinearSVC(loss="squared_hinge"), with an
unpenalised intercept). The squared hinge is smooth, so all classes are solved together in the primal with
L-BFGS: two [N, D] x [D, K] products per iteration. liblinear's coordinate descent was far slower on 7k-28k
dimensional, strongly correlated D features (minutes per C for 1000 examples on 2 cores).

C is chosen on a held-out validation split (the paper's SVHN protocol: 10,000 validation images), the SVM with
the chosen C is then scored on the test split. Features are standardised with the labelled training set's
mean/std first, so one C grid fits every feature type (pixels, D features).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.optimize
from absl import logging

DEFAULT_C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass
class SVMResult:
    """Outcome of one feature set under the SVM protocol."""

    test_accuracy: float
    validation_accuracy: float
    best_c: float
    validation_accuracy_by_c: dict[str, float]
    unconverged_c: list[float]  # C values whose fit hit the iteration limit (their accuracy is approximate)
    train_examples: int
    feature_dims: int
    seconds: float

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ProtocolSplit:
    """Indices into the training split: the labelled SVM training set and the validation set for choosing C."""

    train: np.ndarray
    validation: np.ndarray


@dataclasses.dataclass
class LinearModel:
    """A trained one-vs-rest linear classifier: scores = x @ weights + bias, one column per class."""

    weights: np.ndarray  # [D, K]
    bias: np.ndarray  # [K]
    classes: np.ndarray  # [K] the label of each column
    converged: bool = True

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Scores [N, K]."""
        return np.asarray(x, np.float32) @ self.weights.astype(np.float32) + self.bias.astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The highest-scoring class of each row."""
        return self.classes[np.argmax(self.decision_function(x), axis=1)]


def class_balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` random positions of each label in `labels` (all classes must have that many)."""
    chosen = []
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        if len(positions) < per_class:
            raise ValueError(f"class {label} has only {len(positions)} examples, fewer than labels_per_class="
                             f"{per_class}; lower --labels_per_class or --validation_examples")
        chosen.append(rng.choice(positions, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def make_protocol_split(labels: np.ndarray, validation_examples: int, labels_per_class: int = 0,
                        train_examples: int = 0, seed: int = 0) -> ProtocolSplit:
    """Random disjoint validation and labelled-training indices into a training split's labels.

    labels_per_class > 0: a class-balanced labelled set (the paper's low-label SVHN protocol);
    otherwise all remaining examples, or a random `train_examples` of them when > 0 (to bound SVM time).
    """
    if validation_examples <= 0 or validation_examples >= len(labels):
        raise ValueError(f"validation_examples={validation_examples} must be in [1, {len(labels) - 1}] "
                         f"(the training split has {len(labels)} examples)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    validation, pool = np.sort(order[:validation_examples]), order[validation_examples:]
    if labels_per_class > 0:
        train = pool[class_balanced_indices(labels[pool], labels_per_class, rng)]
    elif train_examples > 0:
        train = pool[:train_examples]
    else:
        train = pool
    return ProtocolSplit(train=np.sort(train), validation=validation)


def fit_l2_svm(x: np.ndarray, y: np.ndarray, c: float, init: LinearModel | None = None,
               max_iter: int = 500, tol: float = 1e-6) -> LinearModel:
    """One-vs-rest L2-SVM (squared hinge, L2 penalty, unpenalised bias) by L-BFGS in the primal.

    Stops when the objective improves by less than `tol` (relative): accuracies are then settled to well
    under 1% of predictions, at a fraction of the time of full convergence on nearly separable features.
    """
    x = np.asarray(x, np.float32)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("the SVM needs at least two classes in its training labels")
    signs = np.where(y[:, None] == classes[None, :], 1.0, -1.0).astype(np.float32)  # [N, K]
    d, k = x.shape[1], len(classes)
    if len(classes) == 2:  # one decision function is enough for two classes, as in LinearSVC
        signs, k = signs[:, 1:], 1

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = theta[:d * k].reshape(d, k), theta[d * k:]
        slack = np.maximum(0.0, 1.0 - signs * (x @ weights.astype(np.float32) + bias.astype(np.float32)))
        loss = 0.5 * float(np.sum(weights**2)) + c * float(np.sum(slack.astype(np.float64) ** 2))
        residual = (-2.0 * c) * signs * slack  # d loss / d score, [N, K]
        grad_w = weights + (x.T @ residual).astype(np.float64)
        return loss, np.concatenate([grad_w.ravel(), residual.sum(axis=0).astype(np.float64)])

    theta = np.zeros(d * k + k)
    if init is not None and init.weights.shape == (d, k):  # warm start along the C grid
        theta = np.concatenate([init.weights.ravel(), init.bias]).astype(np.float64)
    result = scipy.optimize.minimize(objective, theta, jac=True, method="L-BFGS-B",
                                     options={"maxiter": max_iter, "ftol": tol})
    if not result.success:
        logging.warning("L2-SVM (C=%g) stopped before converging: %s", c, result.message)
    weights, bias = result.x[:d * k].reshape(d, k), result.x[d * k:]
    if k == 1:  # back to one column per class: class 0 scores -f, class 1 scores f
        weights, bias = np.concatenate([-weights, weights], axis=1), np.concatenate([-bias, bias])
    return LinearModel(weights=weights, bias=bias, classes=classes, converged=bool(result.success))


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every feature to zero mean, unit variance on `train` (constant features are left at 0)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def evaluate_features(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                      test: tuple[np.ndarray, np.ndarray], c_grid=DEFAULT_C_GRID) -> SVMResult:
    """Standardise, fit an L2-SVM per C, keep the C with the best validation accuracy, report test accuracy."""
    start = time.time()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = train, validation, test
    x_train, x_val, x_test = standardize(np.asarray(x_train, np.float32), np.asarray(x_val, np.float32),
                                         np.asarray(x_test, np.float32))
    by_c, unconverged, best, model = {}, [], None, None
    for c in sorted(c_grid):  # ascending: each fit starts from the previous, smaller-C solution
        model = fit_l2_svm(x_train, y_train, c, init=model)
        accuracy = float(np.mean(model.predict(x_val) == y_val))
        by_c[f"{c:g}"] = accuracy
        if not model.converged:
            unconverged.append(c)
        logging.info("C=%g: validation accuracy %.4f", c, accuracy)
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    val_accuracy, best_c, model = best
    return SVMResult(
        test_accuracy=float(np.mean(model.predict(x_test) == y_test)),
        validation_accuracy=val_accuracy,
        best_c=best_c,
        validation_accuracy_by_c=by_c,
        unconverged_c=unconverged,
        train_examples=len(x_train),
        feature_dims=int(x_train.shape[1]),
        seconds=round(time.time() - start, 1),
    )
