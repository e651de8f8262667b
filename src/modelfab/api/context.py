"""Everything the API needs, built once by the platform (or a test) and passed in."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from modelfab.gateway import EndpointDeleter, Gateway
from modelfab.services.common import Principal
from modelfab.services.datasets import DatasetService
from modelfab.services.endpoints import EndpointService
from modelfab.services.files import FileService
from modelfab.services.fine_tuning import FineTuningService
from modelfab.services.jobs import JobService
from modelfab.services.keys import KeyService
from modelfab.services.registry import RegistryService
from modelfab.services.worker import WorkerService
from modelfab.settings import ServerSettings


@dataclass
class AppContext:
    settings: ServerSettings
    factory: sessionmaker[Session]
    datasets: DatasetService
    files: FileService
    fine_tuning: FineTuningService
    jobs: JobService
    worker: WorkerService
    registry: RegistryService
    keys: KeyService
    endpoints: EndpointService
    gateway: Gateway
    endpoint_deleter: EndpointDeleter[Principal]  # deletes around the gateway's drain
