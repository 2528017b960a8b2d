"""HTTP handlers of the AutoML routes (in the scheduler service: same executor, same auth)."""

from __future__ import annotations

from stratolab.jobs.automl.service import AutoMLService
from stratolab.jobs.service.handlers import BaseHandler
from stratolab.web import path_id


class AutoMLBase(BaseHandler):
    @property
    def automl(self) -> AutoMLService:
        return self.settings["automl"]


class AutoMLListHandler(AutoMLBase):
    async def get(self) -> None:
        self.send({"jobs": self.automl.list(await self.owner())})

    async def post(self) -> None:
        self.send(await self.automl.create(*await self.owner_and_body()), status=201)


class AutoMLProposeHandler(AutoMLBase):
    async def post(self) -> None:
        self.send(await self.automl.propose(*await self.owner_and_body()))


class AutoMLJobHandler(AutoMLBase):
    async def get(self, job_id: str) -> None:
        self.send(self.automl.get(await self.owner(), path_id(job_id, "AutoML search")))

    async def delete(self, job_id: str) -> None:
        self.automl.delete(await self.owner(), path_id(job_id, "AutoML search"))
        self.deleted()


class AutoMLTrialsHandler(AutoMLBase):
    async def get(self, job_id: str) -> None:
        self.send({"trials": self.automl.trials(await self.owner(), path_id(job_id, "AutoML search"))})


class AutoMLInsightsHandler(AutoMLBase):
    async def get(self, job_id: str) -> None:
        self.send(self.automl.insights(await self.owner(), path_id(job_id, "AutoML search")))


class AutoMLStopHandler(AutoMLBase):
    async def post(self, job_id: str) -> None:
        self.send(self.automl.stop(await self.owner(), path_id(job_id, "AutoML search")))


class AutoMLTrialOutputHandler(AutoMLBase):
    async def get(self, job_id: str, number: str) -> None:
        path = self.automl.trial_output(await self.owner(), path_id(job_id, "AutoML search"), path_id(number, "trial", low=0))
        await self.send_file(path, "application/x-ipynb+json")


class AutoMLBestBundleHandler(AutoMLBase):
    async def get(self, job_id: str) -> None:
        data, best = self.automl.best_bundle(await self.owner(), path_id(job_id, "AutoML search"))
        self.set_header("Content-Type", "application/gzip")
        self.set_header("X-Trial-Number", str(best["number"]))
        self.finish(data)
