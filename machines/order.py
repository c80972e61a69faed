"""The demo machine, an order that is charged, shipped and confirmed: it ships inside the package
as `statemachine._demo` (so `statemachine demo` runs from an installed wheel) and is importable
from here as ``machines.order`` (``--app machines.order:Order``), as the docs use it."""

from statemachine._demo import (
    CardDeclined,
    Charged,
    Confirmed,
    FakePaymentGateway,
    GatewayUnavailable,
    Order,
    OrderPlaced,
    PaymentFailed,
    Shipped,
)

__all__ = [
    "CardDeclined",
    "Charged",
    "Confirmed",
    "FakePaymentGateway",
    "GatewayUnavailable",
    "Order",
    "OrderPlaced",
    "PaymentFailed",
    "Shipped",
]
