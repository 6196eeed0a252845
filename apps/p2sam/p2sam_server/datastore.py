"""MONAI Label's local datastore with every name checked: nothing is read or written outside it.

MONAI Label 0.8.5's ``LocalDatastore`` joins request values to its folder as they come
(``image=../outside/x`` writes ``<datastore>/../outside/x.nrrd``, ``tag=../../x`` a label two
levels up). Here every image id and label tag must be an identifier
(:func:`.checks.datastore_id`), every upload a known file type, and every path the datastore
forms must resolve inside its folder before it is used. The request layer checks the same
names first (``asgi.py``); this is the second line.
"""
import os
import tempfile

from monailabel.datastore.local import LocalDatastore

from .checks import Refused, datastore_id, inside, upload_suffix


class CheckedLocalDatastore(LocalDatastore):
    """:class:`LocalDatastore` whose methods refuse ids, tags and files that are not plain names inside it."""

    def _inside(self, path: str) -> str:
        if path and not inside(self._datastore_path, path):
            raise Refused(400, "the request names a file outside the datastore")
        return path

    @staticmethod
    def _refuse_upload(upload: str, exc: Refused):
        """MONAI Label removes its temporary copy of an upload only after a successful answer."""
        if os.path.dirname(os.path.abspath(upload)) == os.path.abspath(tempfile.gettempdir()):
            try:
                os.remove(upload)
            except OSError:
                pass
        raise exc

    # -- ids and tags of every method that forms a path -------------------------------------------
    def add_image(self, image_id, image_filename, image_info):
        try:
            image_id = self._check_new_image(image_id, image_filename)
        except Refused as exc:
            self._refuse_upload(image_filename, exc)
        return super().add_image(image_id, image_filename, image_info)

    def _check_new_image(self, image_id, image_filename):
        if image_id:
            datastore_id(image_id, "image id")
        else:  # MONAI Label takes the uploaded file's name as the id
            image_id = os.path.basename(image_filename)[: -len(upload_suffix(image_filename, "image"))]
            datastore_id(image_id, "image id (from the uploaded file's name)")
        upload_suffix(image_filename, "image")
        name = self._filename(image_id, self._to_id(os.path.basename(image_filename))[1])
        self._inside(os.path.join(self._datastore.image_path(), name))
        return image_id

    def save_label(self, image_id, label_filename, label_tag, label_info):
        try:
            datastore_id(image_id, "image id")
            datastore_id(label_tag, "label tag")
            upload_suffix(label_filename, "label")
            self._inside(os.path.join(self._datastore.label_path(label_tag), "x"))
        except Refused as exc:
            self._refuse_upload(label_filename, exc)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id):
        datastore_id(image_id, "image id")
        return super().remove_image(image_id)

    def remove_label(self, label_id, label_tag):
        datastore_id(label_id, "label id")
        datastore_id(label_tag, "label tag")
        return super().remove_label(label_id, label_tag)

    def get_image_uri(self, image_id):
        datastore_id(image_id, "image id")
        return self._inside(super().get_image_uri(image_id))

    def get_label_uri(self, label_id, label_tag):
        datastore_id(label_id, "label id")
        datastore_id(label_tag, "label tag")
        return self._inside(super().get_label_uri(label_id, label_tag))

    def get_image_info(self, image_id):
        datastore_id(image_id, "image id")
        info = super().get_image_info(image_id)
        info.pop("path", None)  # the server's path is nobody's business
        return info

    def get_label_info(self, label_id, label_tag):
        datastore_id(label_id, "label id")
        datastore_id(label_tag, "label tag")
        return super().get_label_info(label_id, label_tag)

    def update_image_info(self, image_id, info):
        datastore_id(image_id, "image id")
        return super().update_image_info(image_id, info)

    def update_label_info(self, label_id, label_tag, info):
        datastore_id(label_id, "label id")
        datastore_id(label_tag, "label tag")
        return super().update_label_info(label_id, label_tag, info)

    def datalist(self, full_path=True):
        """MONAI Label's training list, with paths relative to the datastore (the server's paths stay on it;
        MONAI Label's own ``full_path=False`` strips nothing: it joins with ``os.pathsep``)."""
        root = os.path.realpath(self._datastore_path)
        return [{k: os.path.relpath(v, root) for k, v in item.items()} for item in super().datalist(full_path=True)]

    def get_dataset_archive(self, limit_cases):
        raise Refused(404, "downloading the whole datastore is disabled on a P2SAM server")
