"""Chat platforms as ingress of the mesh (issue 14): a message in a Feishu, Lark or Slack chat
becomes a durable task for an agent, and the agent's answer goes back to the chat.

    base.py      the Channel interface a platform module implements
    config.py    the mesh file's `channels:` section
    feishu.py    Feishu and Lark (event subscription, reply API)
    slack.py     Slack (Events API, chat.postMessage)
    registry.py  the replica's channel objects, from the live config
    pipeline.py  an inbound message → routing → a durable task and a reply job
    replies.py   reply jobs → the platform (every replica; retries; recorded on the task)
    routes.py    POST /channels/{kind}/{name}/events
"""
