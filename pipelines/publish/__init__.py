"""Publishing recommendation tables to Redis under the versioned contract (docs/redis-contract.md).

- `contract`: key names, statuses, payload columns, the JSON Schemas;
- `packing`: checks on scored rows and their packing into payloads;
- `versions`: writing a version (reserve, stage, verify) and the hourly refresh of the live one;
- `lifecycle`: its transitions (activate, retire, roll back, delete, garbage collection);
- `index`: the key index per version, so lifecycle steps touch only that version's keys;
- `checks`: what a staged version must pass before it may go live;
- `reader`: the reference reader, what a frontend does;
- `redis_io`: the Redis calls they share;
- `steps`: the same bound to the settings, what the DAG tasks and the CLI call.
"""
