# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training and comparing the models on the demo world
#
# The nightly evaluate step in miniature: hold out the last two days of the latest validated batch,
# fit every model on what came before exactly as the batch would, and score each one's top 10 on
# what users clicked or read in the held-out days. Every cell calls the same library functions as
# the DAG (`models.evaluation.time_split`, `evaluate`, the models' own `fit`/`recommend`), so the
# figures here are the ones the pipeline logs. Run `make demo` first; the test suite executes this
# notebook on its own small world, where the scores are noisy and the hybrid may have too few
# labelled impressions to train its reranker.
#
# Paired with `train_and_compare_models.ipynb` by jupytext: edit either, commit only this `.py` file.

# %%
from datetime import timedelta
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from features.embeddings import build_embeddings
from features.interactions import Recipe, load_events
from inbo import tables
from inbo.errors import NoPositiveExamples
from inbo.lake import Lake, batch_end
from inbo.reasons import catalogue_of, render_frame
from inbo.settings import get_settings
from models.als import ALSModel
from models.content import ContentModel
from models.evaluation import evaluate, time_split, top_k_lists
from models.hybrid import HybridRecommender
from models.popularity import PopularityModel
from pipelines.validate import latest_validated_batch

settings = get_settings()
lake = Lake(settings.lake)
batch = latest_validated_batch(lake)
end = batch_end(batch)
print(f"lake: {settings.lake}\nlatest validated batch: {batch}")

# %% [markdown]
# ## The batch's inputs
#
# Events over twice the history window (the hybrid rebuilds the batch as it was before its label
# window), the items, the subscriptions and the item text embeddings. Embeddings are built here
# with the bundled MiniLM model (offline) if the `features` step has not written them yet.

# %%
events, duplicates = load_events(lake, end - timedelta(days=2 * settings.history_days), end)
items = lake.read_batch(tables.ITEMS, batch)
subscriptions_table = (
    tables.SUBSCRIPTIONS
    if lake.has_batch(tables.SUBSCRIPTIONS, batch)
    else tables.staging(tables.SUBSCRIPTIONS.path)
)
subscriptions = lake.read_batch(subscriptions_table, batch)
if not lake.has_batch(tables.EMBEDDINGS, batch):
    print(build_embeddings(end, settings))
embeddings = lake.read_batch(tables.EMBEDDINGS, batch)
print(
    f"{len(events):,} events ({duplicates} duplicates dropped), {len(items):,} items, "
    f"{len(subscriptions):,} subscriptions from {subscriptions_table.path}, "
    f"{len(embeddings):,} embeddings by {embeddings['model'].iloc[0]}"
)

# %% [markdown]
# ## The split: fit before T, find what users clicked or read in [T, T + 2 days)

# %%
holdout = timedelta(days=2)
split = time_split(
    events,
    items,
    cutoff=end - holdout,
    window=holdout,
    settings=settings,
    subscriptions=subscriptions,
    embeddings=embeddings,
)
train = split.train
print(
    f"{split.name}: training on {len(train.interactions):,} user-item pairs "
    f"({train.interactions['user_id'].nunique():,} users, {len(split.catalogue):,} items); "
    f"{len(split.truth):,} truth pairs for {len(split.users):,} users"
)

# %% [markdown]
# ## Fit and score every model
#
# Each factory keeps the model it makes, so the fitted models can be inspected below. The models
# take the batch's settings as the DAG's evaluate step does. The hybrid trains a LightGBM reranker
# on the impressions of its label window; when nobody clicked or read anything shown there, it
# cannot fit (`NoPositiveExamples`) and is left out of the comparison: any other error stops here.

# %%
fitted = {}


def kept(name, make):
    """A factory for `evaluate` that also remembers the model it made, under `name`."""

    def factory():
        fitted[name] = make()
        return fitted[name]

    return factory


baselines = {
    "popularity": PopularityModel,
    "content": ContentModel,
    "als": partial(ALSModel, **settings.als_params),
}
hybrid = partial(
    HybridRecommender,
    als_params=settings.als_params,
    label_days=settings.reranker_label_days,
    per_source=settings.candidates_per_source,
    recipe=Recipe.from_settings(settings),
)
table = evaluate({name: kept(name, make) for name, make in baselines.items()}, split)
try:
    table = pd.concat([table, evaluate({"hybrid": kept("hybrid", hybrid)}, split)])
except NoPositiveExamples as error:
    fitted.pop("hybrid", None)
    print(f"hybrid not evaluated: its reranker cannot fit on this world ({error})")
table.T.round(4)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [2, 1]})
table[["ndcg_at_k", "recall_at_k"]].rename(
    columns={"ndcg_at_k": "nDCG@10", "recall_at_k": "recall@10"}
).plot.bar(ax=axes[0], rot=0, title=f"held-out ranking quality ({len(split.users)} users)")
table[["fit_seconds", "recommend_seconds"]].plot.barh(
    ax=axes[1], stacked=True, title="seconds to fit and recommend"
)
fig.tight_layout()
table[["fit_seconds", "recommend_seconds"]].round(2)

# %% [markdown]
# ## What the hybrid's reranker learned
#
# LightGBM's total gain per ranking feature, as a share of all the gain: which candidate scores
# and features decide the final order.

# %%
if "hybrid" in fitted:
    reranker = fitted["hybrid"].reranker
    examples = fitted["hybrid"].examples
    print(
        f"reranker trained on {len(examples):,} shown candidates of "
        f"{examples['user_id'].nunique():,} users, {int((examples['label'] > 0).sum()):,} positive"
    )
    importance = reranker.feature_importance()
    importance.set_index("feature")["share"].sort_values().plot.barh(
        figsize=(7, 0.3 * len(importance) + 1), title="reranker feature importance (share of gain)"
    )
    display(importance.round(4))
else:
    print("no fitted hybrid on this world: nothing to show")

# %% [markdown]
# ## One user's lists, with the reasons each model gives
#
# The evaluated user with the most held-out reads: each model's top 5 after removing what they
# have already seen (as the evaluation does); `hit` marks what they went on to click or read.
# Models tag candidates with a reason code and ref; the sentence is rendered from the catalogue.

# %%
titles = items.set_index("item_id")["title"]
catalogue = catalogue_of(items)
user = int(split.truth["user_id"].value_counts().idxmax())
truth = set(split.truth.loc[split.truth["user_id"] == user, "item_id"])
seen = split.seen[split.seen["user_id"] == user]
print(f"user {user}: {len(seen)} items seen before T, {len(truth)} clicked or read after")
lists = []
for name, model in fitted.items():
    candidates = model.recommend(np.array([user]), 5 + len(seen))
    top = top_k_lists(candidates, np.array([user]), seen, 5)
    proposed = candidates.drop_duplicates("item_id")
    reasons = render_frame(proposed, catalogue).set_axis(proposed["item_id"])
    lists.append(
        top.assign(
            model=name,
            title=top["item_id"].map(titles),
            reason=top["item_id"].map(reasons),
            hit=top["item_id"].isin(truth),
        )
    )
pd.concat(lists)[["model", "rank", "title", "reason", "hit"]].set_index(["model", "rank"])

# %% [markdown]
# ## Items like this one, according to ALS
#
# The cosine neighbours of the most read training item in ALS's factor space: issues read by the
# same people, whatever their text says.

# %%
als = fitted["als"]
positive = train.interactions[train.interactions["weight"] > 0]
item = int(positive["item_id"].value_counts().idxmax())
print(f"item {item}: {titles[item]!r} ({items.set_index('item_id').at[item, 'category']})")
similar = als.similar_items(item, k=8)
similar.assign(
    title=similar["item_id"].map(titles),
    category=similar["item_id"].map(items.set_index("item_id")["category"]),
).round(3)
