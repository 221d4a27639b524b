"""The SavedModel export, the TF Serving REST client (numpy only) and the search service.
Importing this package imports nothing: pick the module you need."""
