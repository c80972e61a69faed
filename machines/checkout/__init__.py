"""A checkout saga: reserve stock, charge the card, extend the subscription, confirm the order.

Each step does one thing, and each way that can go wrong is a state you can see in the database::

    CheckoutStarted
      |  reserve_stock ------------------------------> OutOfStock
      v
    StockReserved <---+  find_charge: it did not happen, charge again
      |  charge_card -+
      |  charge_card fails for good (declined) ---------------+
      v                                                       |
    Charged                                                   |
      |  extend_subscription fails for good ---> Refunding    |
      v                                            |  refund  |
    SubscriptionExtended                           v          v
      |  confirm (transactional)                  ReleasingStock
      v                                            |  release_stock
    Completed                                      v
                                    Refunded | PaymentDeclined | PaymentFailed

How each side effect is made safe:

- **Stock and subscription** calls send ``Idempotency-Key: ctx.idempotency_key``. A retried
  attempt sends the same key, so the service does the work once; the next step gets a new key.
- **The charge** is `at_most_once`: an attempt that may have charged (the worker died, the call
  timed out or got a 5xx) is never re-run blindly. `find_charge` asks the payment service whether
  a charge with that attempt's key exists, and either moves on with it or charges again.
- **The order row** is written by a transactional step through ``ctx.connection``: it commits in
  the same transaction as the state change, so there is never one without the other.
- **Compensations** are ordinary states: a subscription that cannot be extended is refunded and
  the stock released; a declined card releases the stock. They carry the `Failure` that sent the
  workflow there.

Nothing short-lived is kept in a state: the token for the subscription service is fetched by the
handler each time it runs, and the stock is looked at afresh by every attempt.

The package: `states` (the order and its states, the orders table), `api` (the three services
and their errors), `machine` (the saga). Run it: ``statemachine worker --app
machines.checkout:from_env`` with ``CHECKOUT_PAYMENTS_URL``, ``CHECKOUT_STOCK_URL`` and
``CHECKOUT_SUBSCRIPTIONS_URL`` set.
"""

from machines.checkout.api import (
    CardDeclined,
    PaymentsAPI,
    Rejected,
    ServiceError,
    StockAPI,
    SubscriptionsAPI,
)
from machines.checkout.machine import SERVICE_RETRY, Checkout, CheckoutSaga, from_env
from machines.checkout.states import (
    Charged,
    CheckoutStarted,
    Completed,
    Order,
    OutOfStock,
    PaymentDeclined,
    PaymentFailed,
    Refunded,
    Refunding,
    ReleasingStock,
    StockReserved,
    SubscriptionExtended,
    metadata,
    orders,
)

__all__ = [
    "SERVICE_RETRY",
    "CardDeclined",
    "Charged",
    "Checkout",
    "CheckoutSaga",
    "CheckoutStarted",
    "Completed",
    "Order",
    "OutOfStock",
    "PaymentDeclined",
    "PaymentFailed",
    "PaymentsAPI",
    "Refunded",
    "Refunding",
    "Rejected",
    "ReleasingStock",
    "ServiceError",
    "StockAPI",
    "StockReserved",
    "SubscriptionExtended",
    "SubscriptionsAPI",
    "from_env",
    "metadata",
    "orders",
]
