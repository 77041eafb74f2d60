"""The recommendation routes (the answers are :class:`serving.reco.Recommender`'s):
``GET /v1/customers/{id}/recommendations``, ``GET /v1/visitors/{anonymous_id}/recommendations``
and ``GET /v1/products/{id}/similar``, their query parameters, and how the app gets its
recommender."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response

from features import products as pr
from schemas.events import MAX_ID_LEN
from serving.auth import guarded
from serving.deps import AsOfQ, NowDep, json_answer, parse_as_of
from serving.errors import error_responses
from serving.reco import MAX_N, RecoMetrics, Recommender


def install_recommendations(app: FastAPI, path: str | None) -> None:
    """Load the settings (``path``: a file, ``None`` for the shipped one; a bad file raises
    :class:`decisions.recommend.RecoConfigError`), add the routes and the metrics."""
    from decisions.recommend import load_config

    app.state.reco_config = load_config(path)
    app.state.reco_metrics = RecoMetrics(app.state.metrics.registry)
    app.state.recommender = None
    app.include_router(router, **guarded("read"))


def get_recommender(request: Request) -> Recommender:
    """Dependency: the app's recommender, made on first use from the lifespan's Redis client."""
    state = request.app.state
    if state.recommender is None:
        state.recommender = Recommender(state.reco_config, state.redis, state.reco_metrics,
                                        consent=state.settings.consent)  # fmt: skip
    assert isinstance(state.recommender, Recommender)
    return state.recommender


RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
NQ = Annotated[int, Query(ge=1, le=MAX_N, description="How many products to list.")]
ProductQ = Annotated[
    str | None,
    Query(min_length=1, max_length=pr.MAX_PRODUCT_ID, description="The product on the page."),
]
CategoryQ = Annotated[
    str | None, Query(min_length=1, max_length=60, description="Only products of this category.")
]
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)]

router = APIRouter(tags=["recommendations"])


@router.get(
    "/v1/customers/{customer_id}/recommendations",
    responses=error_responses(422),
    summary="Products to show a customer now",
)
async def customer_recommendations(
    customer_id: IdPath,
    rec: RecommenderDep,
    now_ms: NowDep,
    n: NQ = 10,
    context_product: ProductQ = None,
    category: CategoryQ = None,
    as_of: AsOfQ = None,
) -> Response:
    """Ranked products with their score, sources and a reason; an unknown customer gets the
    non-personal list (``"personal": false``)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    body = await rec.recommend(
        as_of_ms, n, customer_id=customer_id, context_product=context_product, category=category
    )
    return json_answer(body)


@router.get(
    "/v1/visitors/{anonymous_id}/recommendations",
    responses=error_responses(422),
    summary="Products to show a visitor now (the linked customer's, or anonymous)",
)
async def visitor_recommendations(
    anonymous_id: IdPath,
    rec: RecommenderDep,
    now_ms: NowDep,
    n: NQ = 10,
    context_product: ProductQ = None,
    category: CategoryQ = None,
    as_of: AsOfQ = None,
) -> Response:
    """The recommendations of the customer the device is linked to, else of the device's own
    anonymous profile (an unknown device: the non-personal list)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    body = await rec.recommend(
        as_of_ms, n, anonymous_id=anonymous_id, context_product=context_product, category=category
    )
    return json_answer(body)


@router.get(
    "/v1/products/{product_id}/similar",
    responses=error_responses(422),
    summary="Products like this one",
)
async def similar_products(
    product_id: Annotated[str, Path(min_length=1, max_length=pr.MAX_PRODUCT_ID)],
    rec: RecommenderDep,
    now_ms: NowDep,
    n: NQ = 10,
    as_of: AsOfQ = None,
) -> Response:
    """Viewed, carted and bought together with the product, then popular in its category
    (``"known": false``: the stream has not seen the product yet)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    return json_answer(await rec.similar(product_id, n, as_of_ms))
