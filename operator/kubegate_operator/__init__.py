"""The kubegate operator (kopf): watches GatewayRoutes and EndpointSlices, compiles, pushes, writes status."""
