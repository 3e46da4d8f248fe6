"""Client for the consumer UMS websocket (LivePerson Messaging Window API)."""
