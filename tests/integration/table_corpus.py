"""A corpus of real-world-shaped tables, generated deterministically from scikit-learn's bundled
datasets and make_classification / make_regression: column names with spaces, `/`, `.`, `-`,
brackets, unicode, leading digits, names that collide once sanitised, 200-character names; and
booleans, integers with missing values, high-cardinality categoricals, constant and ID-like
columns, string targets.

`TABLES` lists (name, builder); `build(name)` returns a Table (frame, target, task, the spec's
extra parts, the algorithms to train it with). Used by tests/integration/test_table_corpus.py
and bench/onnx_share.py. Small tables: the whole corpus trains in about a minute on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LONG = "a feature with a very long name " + "x" * 168  # 200 characters
assert len(LONG) == 200

FAST = {"random_forest": {"n_estimators": 20}, "gradient_boosting": {"max_iter": 15},
        "xgboost": {"n_estimators": 10, "max_depth": 3}, "svm": {}, "knn": {}}


@dataclass
class Table:
    name: str
    frame: pd.DataFrame
    target: str
    task: str
    algorithms: list[str]
    spec: dict = field(default_factory=dict)  # merged into the TrainingJob spec (cleaning, features, …)
    dropped: list[str] = field(default_factory=list)  # columns the spec drops (free text)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _cats(rng, n: int, levels: list[str], p=None) -> np.ndarray:
    return rng.choice(np.asarray(levels, dtype=object), n, p=p)


def iris_slash() -> Table:
    from sklearn.datasets import load_iris

    d = load_iris(as_frame=True)
    f = d.frame.rename(columns={"petal width (cm)": "petal width/length (cm)"})
    f["target"] = np.asarray(d.target_names)[d.target]
    rng = _rng(1)
    f["région/zone"] = _cats(rng, len(f), ["nord", "sud", "est"])
    return Table("iris_slash", f.rename(columns={"target": "species"}), "species", "classification",
                 ["random_forest", "logistic_regression", "knn"])


def wine_bool() -> Table:
    from sklearn.datasets import load_wine

    d = load_wine(as_frame=True)
    f = d.frame.copy()
    rng = _rng(2)
    f["is organic?"] = rng.random(len(f)) < 0.4
    f["cellar.code"] = _cats(rng, len(f), ["A-1", "B-2", "C-3", "D-4"])
    return Table("wine_bool", f, "target", "classification", ["decision_tree", "gradient_boosting", "svm"])


def breast_cancer_ties() -> Table:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    f = d.frame.copy()
    rng = _rng(3)
    f["2nd opinion"] = _cats(rng, len(f), ["yes", "no", "pending"])
    return Table("breast_cancer_ties", f, "target", "classification", ["random_forest", "xgboost", "ridge"])


def diabetes_nullable() -> Table:
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True, scaled=False)
    f = d.frame.rename(columns={"bmi": "bmi.value", "bp": "bp-mean", "s1": "s1 [tc]"})
    rng = _rng(4)
    visits = pd.array(rng.integers(0, 12, len(f)), dtype="Int64")
    visits[rng.random(len(f)) < 0.1] = pd.NA
    f["visits (count)"] = visits
    f["sex"] = np.where(f["sex"] > 1.5, "M", "F").astype(object)
    return Table("diabetes_nullable", f.rename(columns={"target": "progression"}), "progression", "regression",
                 ["ridge", "gradient_boosting", "random_forest"], spec={"cleaning": {"missing": "median"}})


def colliding_names() -> Table:
    from sklearn.datasets import make_classification

    X, y = make_classification(300, 6, n_informative=4, random_state=5)
    f = pd.DataFrame(X, columns=["a b", "a/b", "a.b", "a-b", "a_b", LONG])
    rng = _rng(5)
    f["c0_a_b"] = _cats(rng, len(f), ["p", "q"])  # literally the generated form of another name
    f["label"] = np.where(y == 1, "yes", "no")
    return Table("colliding_names", f, "label", "classification", ["logistic_regression", "decision_tree", "knn"])


def high_cardinality() -> Table:
    from sklearn.datasets import make_classification

    X, y = make_classification(400, 5, n_informative=3, n_classes=3, n_clusters_per_class=1, random_state=6)
    f = pd.DataFrame(X, columns=[f"x{i} (raw)" for i in range(5)])
    rng = _rng(6)
    levels = [f"store-{i:03d}" for i in range(120)]
    p = np.array([40.0] * 5 + [1.0] * 115)
    f["store id/name"] = _cats(rng, len(f), levels, p / p.sum())
    f["class"] = y
    return Table("high_cardinality", f, "class", "classification", ["random_forest", "gradient_boosting", "svm"],
                 spec={"features": {"maxCategories": 8}})


def constant_and_id() -> Table:
    from sklearn.datasets import make_regression

    X, y = make_regression(300, 5, noise=5.0, random_state=7)
    f = pd.DataFrame(X, columns=["1st", "2nd", "3rd", "x.y.z", "x-y-z"])
    rng = _rng(7)
    f.insert(0, "row id", np.arange(1, len(f) + 1))
    f["always one"] = 1.0
    f["flag"] = np.where(rng.random(len(f)) < 0.5, "True", "False")
    f["y"] = y
    return Table("constant_and_id", f, "y", "regression", ["linear_regression", "decision_tree", "knn"])


def unicode_names() -> Table:
    from sklearn.datasets import make_classification

    X, y = make_classification(300, 4, n_informative=3, n_redundant=0, random_state=8)
    f = pd.DataFrame(X, columns=["température °C", "数量", "naïve score", "Δ change"])
    rng = _rng(8)
    f["città"] = _cats(rng, len(f), ["Roma", "Milano", "Napoli", "Torino"])
    f["résultat"] = np.where(y == 1, "oui", "non")
    return Table("unicode_names", f, "résultat", "classification", ["xgboost", "logistic_regression", "random_forest"])


def brackets_missing() -> Table:
    from sklearn.datasets import make_regression

    X, y = make_regression(300, 5, noise=10.0, random_state=9)
    f = pd.DataFrame(X, columns=["[x]", "{y}", "x[0]", "(z)", LONG])
    rng = _rng(9)
    for c in ["[x]", "{y}"]:
        f.loc[rng.random(len(f)) < 0.08, c] = np.nan
    grade = _cats(rng, len(f), ["low", "mid", "high", None])
    f["grade (A/B)"] = grade
    f["target / label (y)"] = y
    return Table("brackets_missing", f, "target / label (y)", "regression", ["svm", "xgboost", "random_forest"],
                 spec={"cleaning": {"missing": "most_frequent"}})


def nullable_ints_cls() -> Table:
    from sklearn.datasets import make_classification

    X, y = make_classification(300, 4, n_informative=3, n_redundant=0, random_state=10)
    f = pd.DataFrame(X, columns=["f 1", "f 2", "f 3", "f 4"])
    rng = _rng(10)
    n = len(f)
    age = pd.array(rng.integers(18, 90, n), dtype="Int64")
    age[rng.random(n) < 0.1] = pd.NA
    f["age (years)"] = age
    member = pd.array(rng.random(n) < 0.5, dtype="boolean")
    member[rng.random(n) < 0.05] = pd.NA
    f["member?"] = member
    f["y"] = y
    return Table("nullable_ints_cls", f, "y", "classification", ["gradient_boosting", "decision_tree", "knn"],
                 spec={"cleaning": {"missing": "mean"}})


def digits_pixels() -> Table:
    from sklearn.datasets import load_digits

    d = load_digits(as_frame=True)
    f = d.frame.iloc[:400].copy()
    f.columns = [f"px[{i // 8},{i % 8}]" if c != "target" else "digit" for i, c in enumerate(f.columns)]
    f = f.loc[:, f.nunique() > 1]
    return Table("digits_pixels", f, "digit", "classification", ["logistic_regression", "random_forest", "svm"])


def wine_regression_text() -> Table:
    from sklearn.datasets import load_wine

    d = load_wine(as_frame=True)
    f = d.frame.drop(columns=["target"])
    rng = _rng(12)
    words = ["fruity", "dry", "oaky", "crisp", "bold", "smooth", "tannic", "floral", "earthy", "spicy"]
    f["tasting notes"] = [" ".join(rng.choice(words, 6)) + f" batch {i}" for i in range(len(f))]
    return Table("wine_regression_text", f, "alcohol", "regression", ["ridge", "gradient_boosting", "knn"],
                 spec={"cleaning": {"dropColumns": ["tasting notes"]}}, dropped=["tasting notes"])


def ordinal_high_cardinality() -> Table:
    from sklearn.datasets import make_regression

    X, y = make_regression(300, 3, noise=3.0, random_state=13)
    f = pd.DataFrame(X, columns=["0lead", "-neg", ".dot"])
    rng = _rng(13)
    f["zip/code"] = _cats(rng, len(f), [f"{i:05d}" for i in range(60)])
    f["ok"] = rng.random(len(f)) < 0.3
    f["out"] = y
    return Table("ordinal_high_cardinality", f, "out", "regression", ["decision_tree", "linear_regression", "xgboost"],
                 spec={"features": {"oneHot": False, "maxCategories": 10}})


def iris_int_labels() -> Table:
    from sklearn.datasets import load_iris

    d = load_iris(as_frame=True)
    f = d.frame.rename(columns={"target": "the class"})
    rng = _rng(14)
    f["batch-no."] = rng.integers(1, 4, len(f)).astype(str)
    return Table("iris_int_labels", f, "the class", "classification", ["svm", "xgboost", "decision_tree"])


TABLES = [iris_slash, wine_bool, breast_cancer_ties, diabetes_nullable, colliding_names, high_cardinality,
          constant_and_id, unicode_names, brackets_missing, nullable_ints_cls, digits_pixels, wine_regression_text,
          ordinal_high_cardinality, iris_int_labels]
BY_NAME = {t.__name__: t for t in TABLES}


def build(name: str) -> Table:
    return BY_NAME[name]()


def all_tables() -> list[Table]:
    return [t() for t in TABLES]


def spec_for(table: Table, algorithm: str, uri: str, fmt: str, formats=("onnx", "joblib")) -> dict:
    spec = {
        "model": "corpus",
        "dataset": {"uri": uri, "format": fmt, "target": table.target},
        "algorithm": {"name": algorithm, "task": table.task, "params": dict(FAST.get(algorithm, {}))},
        "export": {"formats": list(formats)},
    }
    for key, value in table.spec.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


def write(table: Table, directory, fmt: str = "parquet"):
    """The table as a file; Parquet keeps nullable dtypes, CSV is what most exports are."""
    from pathlib import Path

    path = Path(directory) / f"{table.name}.{'parquet' if fmt == 'parquet' else 'csv'}"
    if fmt == "parquet":
        table.frame.to_parquet(path, index=False)
    else:
        table.frame.to_csv(path, index=False)
    return path
