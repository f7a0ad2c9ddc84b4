"""Topic-based subscriptions (HL7 Subscriptions R5 Backport IG, R4): hospital services learn of plans as they happen.

    topics.py     the four SubscriptionTopics (as Basic) and which changes are events of which
    resource.py   the Subscription a client may create (backport-subscription), endpoint safety, access
    tables.py     subscriptions and their notification outbox
    events.py     events into the outbox, in the transaction of the change (plan and delivery hooks)
    notifier.py   the relay that sends them: handshake, events in order, heartbeats, retries, error
    bundles.py    notification Bundles and SubscriptionStatus Parameters
    routes.py     Basic, Subscription create/read/search/delete, $status, $events
    embedded.py   wiring into the app and `cicatrix dispatch`
"""
