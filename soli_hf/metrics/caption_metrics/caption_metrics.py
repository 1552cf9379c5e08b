"""coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) as a HuggingFace ``evaluate`` metric.

Load it offline from this folder (or this file)::

    import evaluate
    metric = evaluate.load("soli_hf/metrics/caption_metrics")
    metric.compute(predictions=["a dog runs"], references=[["a dog is running", "a brown dog runs"]])

It needs ``soli_hf`` importable (the scores come from
:func:`soli_hf.metrics.compute_caption_metrics`, so both return the same dict).
"""

import datasets
import evaluate

from soli_hf.metrics import compute_caption_metrics

_CITATION = """\
@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation for Any
  Target Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and others}, journal={arXiv:1504.00325}, year={2015}}
"""

_DESCRIPTION = """\
Image-captioning metrics computed exactly as the coco-caption toolkit (pycocoevalcap) computes them:
captions are PTB-tokenised (a pure-Python re-implementation of the Stanford tokenizer run by
coco-caption), then scored with corpus BLEU-1..4 (closest reference length), METEOR 1.5 (Java, via
pycocoevalcap's jar; omitted with a warning when Java or the jar is missing), ROUGE-L (beta 1.2) and
CIDEr-D (sigma 6, document frequencies from the references being scored).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the human captions of each image (at least one each).
    meteor (`bool`, defaults to `True`): compute METEOR (needs Java; takes a few seconds).
Returns:
    `dict` with keys `Bleu_1`, `Bleu_2`, `Bleu_3`, `Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr` (floats).
Examples:
    >>> metric = evaluate.load("soli_hf/metrics/caption_metrics")
    >>> scores = metric.compute(predictions=["a dog runs"], references=[["a dog runs", "a dog is running"]],
    ...                         meteor=False)
    >>> round(scores["Bleu_1"], 3)
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    """coco-caption metrics; inputs follow the HF convention (one list of references per prediction)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/tylin/coco-caption", "https://pypi.org/project/pycocoevalcap/"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]], meteor: bool = True) -> dict[str, float]:
        """Scores of ``predictions[i]`` against ``references[i]`` (the index is the image id)."""
        return compute_caption_metrics(dict(enumerate(predictions)), dict(enumerate(references)), meteor=meteor)
