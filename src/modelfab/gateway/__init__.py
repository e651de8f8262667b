"""The gateway (control-plane side of serving): rate limits, the route table, balancing,
forwarding to replicas, usage. It imports nothing of `services` or `db`; the platform
injects what it needs to read (routes, keys, model refs)."""

from modelfab.gateway.auth import parse_bearer
from modelfab.gateway.balancer import Balancer
from modelfab.gateway.deletion import EndpointDeleter
from modelfab.gateway.errors import GatewayTimeout, RateLimited, Unavailable
from modelfab.gateway.gateway import Gateway
from modelfab.gateway.limiter import RateLimiter
from modelfab.gateway.types import Forwarded, ReplicaRoute, Route, RouteTable

__all__ = [
    "Balancer",
    "EndpointDeleter",
    "Forwarded",
    "Gateway",
    "GatewayTimeout",
    "RateLimited",
    "RateLimiter",
    "ReplicaRoute",
    "Route",
    "RouteTable",
    "Unavailable",
    "parse_bearer",
]
