"""Sharing a deployment: gateway keys, server-held provider tokens with a key pool, daily image
quotas and usage (README "Sharing a deployment").

- `gatekeys`: the keys' shape and their keyed hash (the only form the gateway keeps);
- `secret`: the one Secrets Manager secret with the hash pepper and every provider's token pool;
- `table`: the DynamoDB table (key records, usage counters, set-aside tokens);
- `gate`: the access mode, the caller of a request, quota reservations, the token lease;
- `lease`: the server-held token a request generates with, and failing over to the next one;
- `shared_estimates`: the learned run times, shared by every instance through the table.
"""
