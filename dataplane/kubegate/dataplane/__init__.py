"""The data plane: path normalisation, matcher, balancer, the asyncio proxy and the admin API.

Never imports the operator or kopf.
"""
