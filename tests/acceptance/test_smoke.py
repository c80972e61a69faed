from machines.order import Order, OrderPlaced
from statemachine import Client, Store, Worker


def test_order_completes(store: Store) -> None:
    client = Client(store, [Order])
    with Worker(store, [Order], concurrency=2):
        wid = client.start(Order, OrderPlaced(order_id="o1", amount_cents=100))
        info = client.wait(wid, timeout=60)
    assert info.status == "done"
    assert info.state_name == "Confirmed"
    assert [h.kind for h in client.history(wid)] == [
        "start", "failed_attempt", "transition", "transition", "transition"]
