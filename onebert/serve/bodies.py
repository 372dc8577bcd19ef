"""Request and response bodies of the HTTP API (pydantic models: they are the OpenAPI schema too).

Besides onebert's own `{"texts": [...]}`, /embed and the text bodies of /predict take
text-embeddings-inference's (TEI) `{"inputs": "a text"}` or `{"inputs": ["a", "b"]}`, and such a
request gets TEI's answer shape (see `onebert.serve.routes`). One of `texts` or `inputs`, not both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

# In the schema too, so that schema-driven clients (and fuzzers) know exactly one of the two is needed.
_TEXTS_OR_INPUTS = {"oneOf": [{"required": ["texts"], "not": {"required": ["inputs"]}},
                              {"required": ["inputs"], "not": {"required": ["texts"]}}]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class _TextsOrInputs(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_TEXTS_OR_INPUTS)

    @model_validator(mode="after")
    def _one_of_texts_or_inputs(self):
        given = {"texts", "inputs"} & self.model_fields_set  # `"inputs": null` beside texts is both too
        if len(given) != 1 or getattr(self, given.pop()) is None:
            raise ValueError("send exactly one of 'texts' (onebert's form) or 'inputs' (text-embeddings-inference's)")
        return self

    @property
    def tei(self) -> bool:
        """The request came in TEI's form, so it gets TEI's answer shape."""
        return self.inputs is not None

    def items(self) -> list[Any]:
        """The texts (or pairs), whichever field carried them; a single `inputs` string is a list of one."""
        given = self.texts if self.texts is not None else self.inputs
        return [given] if isinstance(given, str) else list(given)


_Texts = Annotated[list[str], Field(min_length=1)]
_Pairs = Annotated[list[tuple[str, str]], Field(min_length=1)]


class TextsRequest(_TextsOrInputs):
    texts: _Texts | None = Field(None, description="one or more texts")
    inputs: Union[str, _Texts, None] = Field(None, description="text-embeddings-inference's form: a text or a list")


class TextsOrPairsRequest(_TextsOrInputs):
    texts: Union[_Texts, _Pairs, None] = Field(
        None, description="texts, or sentence pairs as [first, second]; not a mix of both")
    inputs: Union[str, _Texts, _Pairs, None] = Field(
        None, description="text-embeddings-inference's form: a text, a list of texts, or a list of [first, second] "
                          "pairs (a list of two texts is two texts here, not one pair)")


class QuestionRequest(_Body):
    question: Annotated[str, Field(min_length=1)]
    context: Annotated[str, Field(min_length=1)]


QARequestBody = Union[QuestionRequest, Annotated[list[QuestionRequest], Field(min_length=1)]]


class EmbedRequest(TextsRequest):
    pooling: Literal["mean", "cls", "pooler"] | None = Field(
        None, description="mean of token states, the [CLS] state, or the tanh pooler (default: the server's)")
    # Strict: JSON true/false only (lax parsing took 0.0 or "yes" as a boolean; found by schemathesis).
    normalize: StrictBool | None = Field(None, description="L2-normalise each vector (default: the server's)")


class ClassPrediction(BaseModel):
    label: str | None = None  # absent for regression
    score: float
    scores: dict[str, float] | None = None


class ClassificationResponse(BaseModel):
    predictions: list[ClassPrediction]


class LabelScore(BaseModel):
    """TEI's /predict answer for one input is a list of these, the most likely label first."""
    label: str
    score: float


class Entity(BaseModel):
    entity: str
    word: str
    start: int
    end: int
    score: float


class NERResponse(BaseModel):
    predictions: list[list[Entity]]


class Answer(BaseModel):
    answer: str
    start: int
    end: int
    score: float


class QAResponse(BaseModel):
    predictions: list[Answer]


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimension: int
    pooling: str
    normalized: bool


# TEI's shapes: /embed answers a list of vectors (for one text too); /predict a list of LabelScore for
# one text, a list of such lists for a list.
TEIEmbedResponse = list[list[float]]
TEIClassResponse = Union[list[LabelScore], list[list[LabelScore]]]
TEINERResponse = Union[list[Entity], list[list[Entity]]]


class HealthResponse(BaseModel):
    status: str
    task: str | None
    model: str
    max_length: int = Field(description="tokens per text of /embed (kept for old clients; see max_lengths)")
    max_lengths: dict[str, int] = Field(
        description="tokens per model sequence each endpoint reads: longer texts get 422 (/embed, and /predict "
                    "for classification) or are split into windows (/predict for NER and QA)")
    ready: bool
    settings: dict[str, Any]
    batching: dict[str, dict[str, Any]]


class ReadyResponse(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    detail: Any


ERRORS = {
    400: {"model": ErrorResponse, "description": "the body is not JSON text (e.g. not UTF-8)"},
    413: {"model": ErrorResponse, "description": "too many texts, a text or the body too large"},
    422: {"model": ErrorResponse, "description": "malformed body, or a text longer than the endpoint's maximum length"},
    503: {"model": ErrorResponse, "description": "the queue is full; retry after the Retry-After seconds"},
    504: {"model": ErrorResponse, "description": "no result within the request timeout"},
}
