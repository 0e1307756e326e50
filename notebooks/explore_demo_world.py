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
# # Exploring the demo world from the lake
#
# What the nightly pipeline sees: the clean `user_events` of the last batches, the items, and the
# interaction table the models learn from. Every cell calls the same library functions as the DAG,
# so this notebook cannot drift from the pipeline. Run `make demo` (or `inbo simulate`, `inbo ingest`,
# `inbo validate`, `inbo features`) first; the test suite executes this notebook on its own world.
#
# Paired with `explore_demo_world.ipynb` by jupytext: edit either, commit only this `.py` file.

# %%
from datetime import timedelta

import matplotlib.pyplot as plt

from features.interactions import aggregate, load_events
from inbo import tables
from inbo.lake import Lake, batch_end
from inbo.settings import get_settings
from pipelines.validate import latest_validated_batch

settings = get_settings()
lake = Lake(settings.lake)
batch = latest_validated_batch(lake)
end = batch_end(batch)
print(f"lake: {settings.lake}\nlatest validated batch: {batch}")

# %% [markdown]
# ## Events in the history window

# %%
events, duplicates = load_events(lake, end - timedelta(days=settings.history_days), end)
items = lake.read_batch(tables.ITEMS, batch)
print(
    f"{len(events):,} events from {events['user_id'].nunique():,} users on {events['item_id'].nunique():,} items; {duplicates} duplicates dropped"
)
mix = events["event_type"].value_counts()
mix

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
mix.plot.bar(ax=axes[0], title="event mix")
events.set_index("ts").resample("D")["event_id"].count().plot(ax=axes[1], title="events per day")
fig.tight_layout()

# %% [markdown]
# ## Activity and popularity are long-tailed

# %%
per_user = events.groupby("user_id").size()
per_item = events[events["event_type"].isin(["click", "read"])].groupby("item_id").size()
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
per_user.plot.hist(bins=40, log=True, ax=axes[0], title="events per user")
per_item.sort_values(ascending=False).reset_index(drop=True).plot(
    ax=axes[1], logy=True, title="clicks + reads per item, ranked"
)
fig.tight_layout()
per_user.describe()

# %% [markdown]
# ## Position bias: the feed's top slots get the clicks

# %%
feed = events[events["event_type"].isin(["impression", "click"]) & events["position"].notna()]
by_position = feed.pivot_table(
    index="position", columns="event_type", values="event_id", aggfunc="count"
).fillna(0)
ctr = (by_position["click"] / by_position["impression"]).rename("ctr")
ctr.head(15).plot.bar(title="click-through rate by position", figsize=(8, 3))
ctr.head(10)

# %% [markdown]
# ## What the models learn from

# %%
pairs = aggregate(events, end, settings.popularity_half_life_days, settings.continue_reading_max)
reads_by_category = (
    events[events["event_type"] == "read"]
    .merge(items[["item_id", "category"]], on="item_id")["category"]
    .value_counts()
)
print(
    f"{len(pairs):,} user-item pairs; {int(pairs['is_read'].sum()):,} finished reads; {int(pairs['dismissed'].sum()):,} dismissals"
)
reads_by_category
