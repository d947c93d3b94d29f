"""The GatewayRoute API: pydantic models of the public custom resource and the CRD generated from them."""
