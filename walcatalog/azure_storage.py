"""django-storages' AzureStorage, with its client options applied to connection strings too.

The upstream backend drops ``client_options`` when it is given a connection string (the form Azurite and
custom endpoints need), so the SDK's own retries would run under ours and attempts would multiply.
"""
from __future__ import annotations

from azure.storage.blob import BlobServiceClient
from storages.backends.azure_storage import AzureStorage


class ArchiveAzureStorage(AzureStorage):
    def _get_service_client(self) -> BlobServiceClient:
        if self.connection_string is not None:
            return BlobServiceClient.from_connection_string(self.connection_string, **self.client_options)
        return super()._get_service_client()
