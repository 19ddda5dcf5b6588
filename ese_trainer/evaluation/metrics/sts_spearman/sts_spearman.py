"""STS Spearman: Spearman's rank correlation ×100 between predicted similarities and gold scores."""

import datasets
import evaluate
from scipy.stats import spearmanr

_DESCRIPTION = """Spearman's rho ×100 between model similarities (e.g. cosine of two sentence embeddings) and
gold similarity scores, the STS protocol of SentEval, SimCSE, AnglE and MTEB (cosine_spearman)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: model similarity of each pair (float).
    references: gold similarity of each pair (float).
Returns:
    spearman: Spearman's rho ×100.
"""

_CITATION = """@inproceedings{conneau2018senteval, title={SentEval: An Evaluation Toolkit for Universal Sentence
Representations}, author={Conneau, Alexis and Kiela, Douwe}, booktitle={LREC}, year={2018}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StsSpearman(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"spearman": float(spearmanr(predictions, references).statistic) * 100.0}
