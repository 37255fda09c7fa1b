import asyncio
import logging
import os
import time
from dataclasses import dataclass

from aiogram import BaseMiddleware, Bot, Dispatcher, F, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, ErrorEvent, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

router = Router()


@dataclass
class Config:
    owner: str


class Form(StatesGroup):
    name = State()
    age = State()
    confirm = State()


class Confirm(CallbackData, prefix="confirm"):
    yes: bool


class Timing(BaseMiddleware):
    async def __call__(self, handler, event, data):
        started = time.monotonic()
        try:
            return await handler(event, data)
        finally:
            logging.info("handled in %.1f ms", (time.monotonic() - started) * 1000)


@router.message(CommandStart())
async def start(message: Message, command: CommandObject, config: Config) -> None:
    text = f"Hello, {message.from_user.first_name}! {config.owner} runs me."
    if command.args:
        text += f" You came with: {command.args}"
    await message.answer(text)


@router.message(Command("help"))
async def help_(message: Message) -> None:
    await message.answer("/form asks three questions, /cancel stops it; I echo the rest.")


@router.message(Command("cancel"))
async def cancel(message: Message, state: FSMContext) -> None:
    await state.clear()
    await message.answer("Cancelled.")


@router.message(Command("form"))
async def form(message: Message, state: FSMContext) -> None:
    await state.set_state(Form.name)
    await message.answer("What is your name?")


@router.message(Form.name, F.text)
async def form_name(message: Message, state: FSMContext) -> None:
    await state.update_data(name=message.text)
    await state.set_state(Form.age)
    await message.answer("How old are you?")


@router.message(Form.age, F.text)
async def form_age(message: Message, state: FSMContext) -> None:
    if not message.text.isdigit() or not 0 < int(message.text) < 130:
        await message.reply("Please send your age as a number.")
        return
    data = await state.update_data(age=int(message.text))
    await state.set_state(Form.confirm)
    builder = InlineKeyboardBuilder()
    builder.button(text="Yes", callback_data=Confirm(yes=True))
    builder.button(text="No", callback_data=Confirm(yes=False))
    text = f"{data['name']}, {data['age']}: is that right?"
    await message.answer(text, reply_markup=builder.as_markup())


@router.callback_query(Form.confirm, Confirm.filter())
async def confirm(query: CallbackQuery, callback_data: Confirm, state: FSMContext) -> None:
    data = await state.get_data()
    await state.clear()
    await query.answer()
    text = f"Saved: {data['name']}, {data['age']}." if callback_data.yes else "Discarded."
    await query.message.edit_text(text)


@router.message(F.photo)
async def photo(message: Message) -> None:
    size = message.photo[-1]
    await message.reply(f"Nice photo, {size.width}x{size.height}.")


@router.message(F.text)
async def echo(message: Message) -> None:
    await message.answer(message.text)


@router.errors()
async def on_error(event: ErrorEvent) -> None:
    logging.error("update failed: %s", event.exception)


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    dp = Dispatcher(config=Config(owner=os.environ.get("BOT_OWNER", "Ada")))
    dp.message.middleware(Timing())
    dp.include_router(router)
    await dp.start_polling(Bot(os.environ["BOT_TOKEN"]))


if __name__ == "__main__":
    asyncio.run(main())
